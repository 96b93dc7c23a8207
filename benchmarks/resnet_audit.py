"""A real-size audit, timed (issue 18): the ResNet-50 example (deployments/specs/resnet50-example.yaml: LIME on 8
images x 1,000 perturbations, act-max of 16 `layer4` units x 128 steps, dissection of `layer3` and `layer4` on 500
concept images, all at 224 px) as `interp-audit run` runs it, next to the forward-pass floor of the same work.

The audit runs method by method (``interp-audit run SPEC --only METHOD``, one after another in one store and one
Prefect API): each method's time is its own, not shared with the others' (an audit of all three overlaps them two
at a time). Per method: ``wall`` (first start to last end of its tasks, as the Prefect API recorded them; the
export, predictions and parity come from the first run's cache after it) and ``run_seconds`` (the whole command).
The floor, measured in this process after
the audit on the same weights: the bare model passes the method needs, timed on a slice and scaled to the whole
(LIME: ONNX Runtime forwards of every image LIME predicts, logits only: 8 samples x (1 + 3 stability seeds x
(1,000 + 200 held-out perturbations) + 42 curve points + 50 faithfulness subsets) = 29,544 images (29,144 before
the faithfulness correlation), not the 8 x 1,000 an earlier version counted; act-max: torch forward + backward to `layer4` for 16 units x 128 steps; dissection: ONNX Runtime forwards of 500 images to both layers). ``gflops``: the same work from
torch's FlopCounterMode on one forward (backward counted as 2x forward), and ``gpu_projection_seconds``: those
FLOPs at 40% of one H200's 67 TFLOP/s FP32, a projection, not a measurement.

    make examples && .venv/bin/python benchmarks/resnet_audit.py   # ~40 min on 2 cores; results/resnet_audit.json
    .venv/bin/python benchmarks/resnet_audit.py --only lime --output resnet_lime   # one method
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from _results import write_results

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SPEC = ROOT / "deployments/specs/resnet50-example.yaml"
GPU_FP32_FLOPS = 67e12  # one H200 (or H100 SXM), dense FP32, from NVIDIA's data sheet
GPU_UTILISATION = 0.4  # an assumption for the projection: convolution-heavy work at moderate batch sizes
METHOD_TASKS = {
    "lime": ("lime",),
    "activation_max": ("actmax-render", "actmax-exemplars"),
    "dissection": ("dissection", "dissection-tables"),
    "shared": ("export-onnx", "load-samples", "predict", "onnx-parity"),
}


def timed(work, repeat: int = 1) -> float:
    started = time.perf_counter()
    for _ in range(repeat):
        work()
    return (time.perf_counter() - started) / repeat


def task_spans(run_id: str) -> dict[str, dict]:
    """Per method: its tasks' wall span and summed run time, from the Prefect API."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(run_id)])))
    figures = {}
    for method, names in METHOD_TASKS.items():
        mine = [run for run in runs if run.name.rsplit("-", 1)[0] in names and run.start_time and run.end_time]
        if mine:
            wall = max(run.end_time for run in mine) - min(run.start_time for run in mine)
            figures[method] = {
                "wall": round(wall.total_seconds(), 1),
                "task_seconds": round(sum(run.total_run_time.total_seconds() for run in mine), 1),
                "tasks": len(mine),
            }
    return figures


def lime_forwards(lime) -> int:
    """The images LIME runs through the model per explained sample and label (top-1: one): the sample itself,
    ``stability_seeds`` neighbourhoods of ``num_samples`` + ``heldout_samples`` perturbations, the deletion and
    insertion curves (at most CURVE_POINTS each) and the ``faithfulness_runs`` subsets."""
    from interp_ops.lime import CURVE_POINTS

    per_sample = (
        1 + lime.stability_seeds * (lime.num_samples + lime.heldout_samples) + 2 * CURVE_POINTS + lime.faithfulness_runs
    )
    return lime.samples * per_sample


def floors(spec: dict) -> dict[str, dict]:
    """The bare model passes each method needs, timed on a slice and scaled; their GFLOPs; the GPU projection."""
    from safetensors.torch import load_file
    from torch.utils.flop_counter import FlopCounterMode

    from interp_audit.spec import LimeSpec
    from interp_ops import onnx_bundle, reference_models
    from interp_ops.layer_capture import LayerCapture

    model = reference_models.resnet50().eval()
    model.load_state_dict(load_file(ROOT / "demo-models/resnet50_seeded.safetensors"))
    ops = spec["ops"]
    onnx_bytes = onnx_bundle.export_torch(model, (3, 224, 224), ["layer3", "layer4"], {})
    session = onnx_bundle.make_session(onnx_bytes, "cpu")
    x = np.random.default_rng(0).random((32, 3, 224, 224), dtype=np.float32)
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            model(torch.from_numpy(x[:1]))
    forward_gflops = counter.get_total_flops() / 1e9

    lime_images = lime_forwards(LimeSpec.model_validate(ops["lime"]))  # with the spec's defaults filled in
    per_image = timed(lambda: onnx_bundle.run_session(session, x, batch_size=32, outputs=[onnx_bundle.LOGITS])) / len(x)
    units, steps = int(ops["activation_max"]["units"].split(":")[1]), ops["activation_max"]["steps"]
    image = torch.randn(units, 3, 224, 224, requires_grad=True)

    def actmax_step():
        with LayerCapture(model, ["layer4"]) as captured:
            model(image)
        captured.outputs["layer4"].mean().backward()

    per_step = timed(actmax_step, repeat=2)
    concept_images = int(re.search(r"n=(\d+)", ops["dissection"]["concepts"]).group(1))
    per_concept = timed(lambda: onnx_bundle.run_session(session, x, batch_size=32, outputs=["layer3", "layer4"])) / len(
        x
    )
    work = {
        "lime": (lime_images * per_image, lime_images * forward_gflops),
        "activation_max": (steps * per_step, steps * units * 3 * forward_gflops),
        "dissection": (concept_images * per_concept, concept_images * forward_gflops),
    }
    return {
        method: {
            "floor_seconds": round(seconds, 1),
            "gflops": round(gflops),
            "gpu_projection_seconds": round(gflops * 1e9 / (GPU_FP32_FLOPS * GPU_UTILISATION), 2),
        }
        for method, (seconds, gflops) in work.items()
    }


def run_method(method: str, work: str, url: str) -> tuple[float, str]:
    """``interp-audit run SPEC --only METHOD``: its wall seconds and its run id."""
    started = time.perf_counter()
    done = subprocess.run(
        [str(ROOT / ".venv/bin/interp-audit"), "run", str(SPEC), "--store", f"{work}/store", "--only", method],
        env={**os.environ, "PREFECT_API_URL": url},
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 1):
        raise SystemExit(f"the {method} audit exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    print(f"  {method}: {seconds:.0f} s", flush=True)
    return seconds, re.search(r"run id: (\S+)", done.stdout + done.stderr).group(1)


def main() -> None:
    from flows.prefect_api import prefect_api
    from interp_ops.reference_models import write_example_weights

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--only", choices=["lime", "activation_max", "dissection"], action="append", help="these methods (repeatable)"
    )
    parser.add_argument("--output", default="resnet_audit", help="results file name (benchmarks/results/NAME.json)")
    args = parser.parse_args()
    write_example_weights(ROOT / "demo-models")
    spec = yaml.safe_load(SPEC.read_text())
    methods = {}
    with tempfile.TemporaryDirectory(prefix="interp-audit-resnet-") as work, prefect_api() as url:
        for method in args.only or ("lime", "activation_max", "dissection"):
            seconds, run_id = run_method(method, work, url)
            spans = task_spans(run_id)
            methods[method] = spans[method] | {"run_seconds": round(seconds, 1)}
            if "shared" in spans and method == "lime":  # the first run computes them; later runs read the cache
                methods["shared"] = spans["shared"]
    for method, floor in floors(spec).items():
        if method not in methods:
            continue
        methods[method] |= floor
        methods[method]["wall_vs_floor"] = round(methods[method]["wall"] / floor["floor_seconds"], 2)
    report = {
        "machine": f"{os.cpu_count()} cores, {platform.machine()}",
        "audit_seconds": round(sum(m["run_seconds"] for name, m in methods.items() if name != "shared"), 1),
        "methods": methods,
        "gpu_projection": f"FLOPs at {GPU_UTILISATION:.0%} of {GPU_FP32_FLOPS / 1e12:.0f} TFLOP/s FP32 (one H200)",
    }
    print(yaml.safe_dump(report, sort_keys=False))
    write_results(args.output, report, quick=False)


if __name__ == "__main__":
    main()
