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
import time

import torch

import interp_ops
from interp_ops.actmax import render_units
from interp_ops.demo_models import DEMO_INPUT, shapes_cnn

LAYER, UNITS, SIZE, LR = "features.8", list(range(32)), 64, 0.05


def ours(model, steps: int) -> float:
    started = time.perf_counter()
    render_units(
        model,
        LAYER,
        UNITS,
        input_shape=(3, SIZE, SIZE),
        mean=DEMO_INPUT["mean"],
        std=DEMO_INPUT["std"],
        steps=steps,
        lr=LR,
        batch_units=len(UNITS),
    )
    return time.perf_counter() - started


def floor(model, steps: int) -> float:
    """Plain forward to the layer, backward and Adam on the batch, the same objective (as actmax_bench's (d))."""
    trunk = model.features[:9]
    images = torch.randn(len(UNITS), 3, SIZE, SIZE, requires_grad=True)
    optimizer = torch.optim.Adam([images], lr=LR)
    units = torch.tensor(UNITS)
    started = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = -trunk(images)[torch.arange(len(UNITS)), units].mean(dim=(1, 2)).sum()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = shapes_cnn().eval().requires_grad_(False)
    ours(model, args.steps), floor(model, args.steps)  # warm-up
    pairs = [(ours(model, args.steps), floor(model, args.steps)) for _ in range(args.pairs)]
    print(f"interp_ops from {interp_ops.__file__}")
    print("ours  " + " ".join(f"{o:.2f}" for o, _ in pairs))
    print("floor " + " ".join(f"{f:.2f}" for _, f in pairs))
    median = statistics.median(o / f for o, f in pairs)
    fastest = min(o for o, _ in pairs) / min(f for _, f in pairs)
    print(f"median pair ratio {median:.3f}, fastest ours / fastest floor {fastest:.3f}")


if __name__ == "__main__":
    main()
