"""Activation maximization against its floor in alternating pairs, to tell a regression from a noisy machine.

The full benchmark (actmax_bench.py) times each contender in rounds; on a machine whose speed drifts between
rounds its (c)/(d) ratio drifts too. Here ours and the floor alternate, so each pair shares the machine's mood.
Run it for two revisions side by side (``PYTHONPATH`` puts a checkout's ``interp_ops`` first):

    PYTHONPATH=/path/to/old/checkout .venv/bin/python benchmarks/actmax_pairs.py --steps 64
    .venv/bin/python benchmarks/actmax_pairs.py --steps 64
"""

from __future__ import annotations

import argparse
import statistics

import torch
from actmax_bench import UNITS, floor, ours  # the full benchmark's (c) and (d), unchanged

import interp_ops
from interp_ops.demo_models import shapes_cnn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = shapes_cnn().eval().requires_grad_(False)
    ours(model, UNITS, args.steps), floor(model, UNITS, args.steps)  # warm-up
    pairs = [(ours(model, UNITS, args.steps), floor(model, UNITS, args.steps)) for _ in range(args.pairs)]
    print(f"interp_ops from {interp_ops.__file__}")
    print("ours  " + " ".join(f"{o:.2f}" for o, _ in pairs))
    print("floor " + " ".join(f"{f:.2f}" for _, f in pairs))
    median = statistics.median(o / f for o, f in pairs)
    fastest = min(o for o, _ in pairs) / min(f for _, f in pairs)
    print(f"median pair ratio {median:.3f}, fastest ours / fastest floor {fastest:.3f}")


if __name__ == "__main__":
    main()
