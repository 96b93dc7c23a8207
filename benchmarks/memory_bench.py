"""Flat memory as the work grows (issue 18): the audit process's peak RSS, small work against 10-50x the work.

Each figure is one real `interp-audit run` in a fresh process (Prefect, the flow engine, every task: the whole
audit process), its peak resident set from the kernel (``wait4``'s ``ru_maxrss``). All runs talk to one local
Prefect server started here, whose own memory is not the audit's and is left out. Pairs, each from one run:

  dissection_rss_10x  dissection of the demo CNN on 1,000 vs 10,000 builtin concept images (target <= 1.2)
  actmax_rss_32x      activation maximization of 64 vs 2,048 units of ResNet-50 `layer4`, 1 step, 64 px renders
                      (target <= 1.2)
  lime_rss_64x        LIME on 16 vs 1,024 samples of the demo CNN (target <= 1.2)
  data_rss_50x        predictions (and parity) on 1,000 vs 50,000 images from a folder (target <= 1.2)
  demo_peak_rss_mb    the demo spec (deployments/specs/shapes-demo.yaml), every method (target <= 1000)

    .venv/bin/python benchmarks/memory_bench.py           # ~30 min on 2 cores; writes benchmarks/results/memory.json
    .venv/bin/python benchmarks/memory_bench.py --quick   # 1/10 of the large sizes; prints only
    .venv/bin/python benchmarks/memory_bench.py --only lime,demo   # updates those figures in memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _results import RESULTS_DIR, write_results

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEMO_MODELS = ROOT / "demo-models"
TARGET_RATIO = 1.2
TARGET_DEMO_MB = 1000

DEMO_MODEL = {
    "source": "torch",
    "name": "shapes-cnn",
    "version": "1",
    "factory": "interp_ops.demo_models:shapes_cnn",
    "weights": str(DEMO_MODELS / "shapes_cnn_honest.safetensors"),
    "input": {
        "shape": [3, 64, 64],
        "range": [0, 1],
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "class_names": ["circle", "square", "triangle"],
    },
    "layers": ["features.8", "features.12"],
}
RESNET_MODEL = {
    "source": "torch",
    "name": "resnet50",
    "version": "1",
    "factory": "interp_ops.reference_models:resnet50",
    "weights": str(DEMO_MODELS / "resnet50_seeded.safetensors"),
    "input": {
        "shape": [3, 224, 224],
        "range": [0, 1],
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    },
    "layers": ["layer4"],
}


def dissection_spec(images: int, work: Path) -> dict:
    return {
        "model": DEMO_MODEL,
        "data": "builtin:shapes?split=val&n=16",
        "ops": {
            "dissection": {
                "layers": ["features.8", "features.12"],
                "concepts": f"builtin:concepts?n={images}",
                "baseline": "none",
            }
        },
    }


def actmax_spec(units: int, work: Path) -> dict:
    return {
        "model": RESNET_MODEL,
        "data": "builtin:shapes?split=val&n=8",
        "ops": {
            "activation_max": {
                "layers": ["layer4"],
                "units": f"first:{units}",
                "steps": 1,
                "exemplars": 2,
                "transforms": "none",
                "image_size": 64,  # 1/12 of the work of a 224 px render: 2,048 units in minutes, not an hour
            }
        },
    }


def lime_spec(samples: int, work: Path) -> dict:
    return {
        "model": DEMO_MODEL,
        "data": f"builtin:shapes?split=train&n={samples}",  # the val split holds 500
        "ops": {
            "lime": {
                "samples": samples,
                "num_samples": 100,
                "hide": 0.0,
                "segmentation": {"method": "slic", "n_segments": 30},
                "stability_seeds": 1,
            }
        },
    }


def data_spec(images: int, work: Path) -> dict:
    return {"model": DEMO_MODEL, "data": str(image_folder(work, images)), "ops": {}}


def image_folder(root: Path, count: int) -> Path:
    """``count`` 64 px PNGs (the builtin shapes, repeated) in a folder of their own."""
    from interp_ops.datasets import load_samples
    from interp_ops.images import png_bytes

    folder = root / f"images-{count}"
    if folder.exists():
        return folder
    folder.mkdir(parents=True)
    shapes = load_samples("builtin:shapes?split=val&n=500", ROOT, 0).x
    encoded = [png_bytes(image) for image in shapes]
    for i in range(count):
        (folder / f"{i:06d}.png").write_bytes(encoded[i % len(encoded)])
    return folder


def peak_rss_mb(spec: dict | Path, work: Path, name: str, env: dict) -> float:
    """Run the spec in a fresh `interp-audit run` process; its peak RSS in MB (exit must be 0 or 1: published)."""
    if isinstance(spec, dict):
        path = work / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"name": name, "seed": 0, **spec, "report": {"store": str(work / "store")}}))
    else:
        path = spec
    command = [str(ROOT / ".venv/bin/interp-audit"), "run", str(path), "--store", str(work / "store")]
    started = time.perf_counter()
    with open(work / f"{name}.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(process.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):
        tail = (work / f"{name}.log").read_text()[-3000:]
        raise SystemExit(f"{name}: interp-audit run exited {code}:\n{tail}")
    peak = usage.ru_maxrss / 1024
    print(f"  {name:<22} peak RSS {peak:7.0f} MB  ({time.perf_counter() - started:.0f} s)", flush=True)
    return peak


def pair(key: str, spec, small: int, large: int, work: Path, env: dict) -> dict:
    """``key``'s ratio: the peak of ``spec(large)`` over that of ``spec(small)``, each in a fresh process."""
    low = peak_rss_mb(spec(small, work), work, f"{key}-{small}", env)
    high = peak_rss_mb(spec(large, work), work, f"{key}-{large}", env)
    ratio = high / low
    print(f"{key} = {ratio:.2f} (target <= {TARGET_RATIO})", flush=True)
    return {key: round(ratio, 3), f"{key}_mb": [round(low), round(high)]}


# figure -> (key, spec builder, small size, large size)
PAIRS = {
    "dissection": ("dissection_rss_10x", dissection_spec, 1000, 10_000),
    "actmax": ("actmax_rss_32x", actmax_spec, 64, 2048),
    "lime": ("lime_rss_64x", lime_spec, 16, 1024),
    "data": ("data_rss_50x", data_spec, 1000, 50_000),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1/10 of the large sizes; writes no results file")
    parser.add_argument("--only", default="dissection,actmax,lime,data,demo", help="comma-separated figures")
    args = parser.parse_args()
    only, scale = set(args.only.split(",")), 10 if args.quick else 1
    from flows.prefect_api import prefect_api
    from interp_ops.demo_models import ensure_demo_models
    from interp_ops.reference_models import write_example_weights

    ensure_demo_models(DEMO_MODELS)
    if "actmax" in only:
        write_example_weights(DEMO_MODELS)
    work = Path(tempfile.mkdtemp(prefix="interp-audit-memory-"))
    report: dict = {"machine": f"{os.cpu_count()} cores, {platform.machine()}", "quick": args.quick}
    try:
        with prefect_api() as url:
            # every run computes its tasks: a result served from an earlier run's cache holds no memory (a demo
            # run on a warm cache peaked at 700 MB against 1,040 computing)
            env = {**os.environ, "PREFECT_API_URL": url, "PREFECT_TASKS_REFRESH_CACHE": "true"}
            for figure, (key, spec, small, large) in PAIRS.items():
                if figure in only:
                    report |= pair(key, spec, small, max(small, large // scale), work, env)
                    save(report, args.quick)
            if "demo" in only:
                demo = peak_rss_mb(ROOT / "deployments/specs/shapes-demo.yaml", work, "demo", env)
                report["demo_peak_rss_mb"] = round(demo)
                print(f"demo_peak_rss_mb = {demo:.0f} (target <= {TARGET_DEMO_MB})", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    save(report, args.quick)


def save(report: dict, quick: bool) -> None:
    """The figures so far, merged into the last results (a run of some figures keeps the others' last values), so
    that a figure that fails later loses none measured before it."""
    previous = RESULTS_DIR / "memory.json"
    merged = (json.loads(previous.read_text()) if previous.exists() and not quick else {}) | report
    merged["ok"] = all(merged.get(key, 0) <= TARGET_RATIO for key, *_ in PAIRS.values()) and (
        merged.get("demo_peak_rss_mb", 0) <= TARGET_DEMO_MB
    )
    write_results("memory", merged, quick)


if __name__ == "__main__":
    main()
