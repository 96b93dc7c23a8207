"""Benchmark-only stand-in for IPython: Lucent imports IPython.display at import time but we never show images."""

from IPython import display

__all__ = ["display"]
