"""Benchmark-only stand-in for torchvision: just what Lucent imports (see benchmarks/shims/README.md)."""
