"""Activation maximization speed: interp_ops.actmax.render_units against Lucent and against the bare optimisation.

One process, one model (the demo CNN with seeded random weights), 32 units of features.8, 64x64 images, the same
number of Adam steps (lr 0.05) for every contender:
  (a) Lucent 0.1.8 render_vis, one unit per call, with its defaults (fft + decorrelated param.image(64),
      standard_transforms, ImageNet normalize) except fixed_image_size=64; thresholds=(steps,), and no progress bar
      or image display. It is slow, so it is timed on the first 4 units and scaled by 32 / 4.
      render_vis hooks every module and never removes its hooks, so each Lucent call gets a fresh copy of the
      model: hooks left behind would slow down every later call, ours included.
  (b) Lucent batched: param.image(64, batch=32) and the sum of objectives.channel(layer, unit, batch=i).
  (c) ours: render_units with its defaults (fft, decorrelate, standard transforms drawn per element, 8
      robustness draws and the scores) at batch_units=32.
  (d) the floor: the same steps of plain forward + backward + Adam on a (32, 3, 64, 64) tensor that requires grad,
      with the same channel objective: no parameterization, no transforms.
The model's parameters are frozen for every contender (ours freezes them itself; Lucent does not, and would also
compute their gradients on a model straight from training). Ours stops the forward at the audited layer, so the floor runs model.features[:9] (up to features.8) too; Lucent
always runs the whole model (it cannot stop early). Other processes share the cores, so each contender runs in
several rounds (rotating order) and its fastest round counts.
Run: .venv/bin/python benchmarks/actmax_bench.py [--quick]  (writes benchmarks/results/actmax.json)

Lucent needs `make bench-deps` (torch-lucent 0.1.8 and kornia 0.4.1 without their dependencies, and decorator)
and the import shims in benchmarks/shims (torchvision.transforms.Normalize, IPython.display). No runtime patch is
needed with torch 2.13: Lucent's fft_image takes the torch.fft path when torch >= 1.7 (a string comparison that
holds for "2.13"), and kornia 0.4.1's warp_affine and translate run unchanged.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _results import write_results

from interp_ops.actmax import render_units
from interp_ops.demo_models import DEMO_INPUT, shapes_cnn

sys.path.insert(0, str(Path(__file__).parent / "shims"))

LAYER, LUCENT_LAYER = "features.8", "features_8"  # Lucent names modules with "_" between the parts
FLOOR_MODULES = 9  # model.features[:9] ends at features.8
UNITS = list(range(32))
LUCENT_TIMED_UNITS = 4
SIZE = 64
LR = 0.05


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def lucent_one_per_call(model, units: list[int], steps: int) -> float:
    from lucent.optvis import objectives, param, render

    def run():
        for unit in units:
            render.render_vis(
                copy.deepcopy(model),
                objectives.channel(LUCENT_LAYER, unit),
                lambda: param.image(SIZE),
                thresholds=(steps,),
                progress=False,
                show_image=False,
                fixed_image_size=SIZE,
            )

    return timed(run)


def lucent_batched(model, units: list[int], steps: int) -> float:
    from lucent.optvis import objectives, param, render

    objective = objectives.Objective.sum(
        [objectives.channel(LUCENT_LAYER, unit, batch=i) for i, unit in enumerate(units)]
    )
    return timed(
        lambda: render.render_vis(
            copy.deepcopy(model),
            objective,
            lambda: param.image(SIZE, batch=len(units)),
            thresholds=(steps,),
            progress=False,
            show_image=False,
            fixed_image_size=SIZE,
        )
    )


def ours(model, units: list[int], steps: int) -> float:
    return timed(
        lambda: render_units(
            model,
            LAYER,
            units,
            input_shape=(3, SIZE, SIZE),
            mean=DEMO_INPUT["mean"],
            std=DEMO_INPUT["std"],
            steps=steps,
            lr=LR,
            batch_units=len(units),
        )
    )


def floor(model, units: list[int], steps: int) -> float:
    """Plain Adam on raw images up to the audited layer, the same objective and loss as ours."""
    head = model.features[:FLOOR_MODULES]
    images = torch.randn((len(units), 3, SIZE, SIZE), generator=torch.Generator().manual_seed(0), requires_grad=True)
    rows, channels = torch.arange(len(units)), torch.tensor(units)

    def run():
        optimizer = torch.optim.Adam([images], lr=LR)
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss = -head(images)[rows, channels].mean(dim=(1, 2)).sum()
            loss.backward()
            optimizer.step()

    return timed(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="32 steps, 2 rounds; prints, writes nothing")
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    steps, rounds = (32, 2) if args.quick else (args.steps, args.rounds)
    warnings.filterwarnings("ignore")  # kornia 0.4.1 warns about deprecated torch calls on every step
    torch.manual_seed(0)
    np.random.seed(0)  # Lucent's transforms draw from NumPy's global state
    model = shapes_cnn().eval().requires_grad_(False)
    timed_units = UNITS[:LUCENT_TIMED_UNITS]
    contenders = {
        "floor": lambda: floor(model, UNITS, steps),
        "ours": lambda: ours(model, UNITS, steps),
        "lucent_batched": lambda: lucent_batched(model, UNITS, steps),
        "lucent_one_per_call": lambda: lucent_one_per_call(model, timed_units, steps) * len(UNITS) / len(timed_units),
    }
    for warm_up in (floor, ours, lucent_batched, lucent_one_per_call):  # kernel selection, Lucent's imports
        warm_up(model, UNITS[:2], 2)
    runs: dict[str, list[float]] = {name: [] for name in contenders}
    for round_index in range(rounds):
        shift = round_index % len(contenders)
        for name in list(contenders)[shift:] + list(contenders)[:shift]:
            runs[name].append(contenders[name]())
            print(f"round {round_index + 1}: {name} {runs[name][-1]:.2f} s", flush=True)
    seconds = {name: min(times) for name, times in runs.items()}
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared), torch {torch.__version__} "
        f"with {torch.get_num_threads()} threads",
        "model": "demo CNN (shapes_cnn), seeded random weights",
        "layer": LAYER,
        "units": len(UNITS),
        "image_size": SIZE,
        "steps": steps,
        "rounds": rounds,
        "lucent_one_per_call_units_timed": len(timed_units),
        "lucent_one_per_call_extrapolated": f"timed on {len(timed_units)} units, scaled by {len(UNITS)}/{len(timed_units)}",
        "forward_stops_at_layer": {"ours": True, "floor": True, "lucent": False},
        "seconds": {key: round(value, 3) for key, value in seconds.items()},
        "seconds_all_rounds": {key: [round(t, 3) for t in times] for key, times in runs.items()},
        "speedup_vs_lucent": round(seconds["lucent_one_per_call"] / seconds["ours"], 3),
        "speedup_vs_lucent_batched": round(seconds["lucent_batched"] / seconds["ours"], 3),
        "overhead_vs_floor": round(seconds["ours"] / seconds["floor"], 3),
    }
    print(json.dumps(report, indent=2), flush=True)
    write_results("actmax", report, args.quick)


if __name__ == "__main__":
    main()
