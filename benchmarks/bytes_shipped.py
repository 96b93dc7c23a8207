"""Bytes each task submission of the demo audit ships to a worker: its parameters as they are pickled today, and
with the big ones (ONNX bytes, sample arrays) replaced by refs to blobs on the report store (interp_audit.blobs).

The flow's own fan-out (flows.methods.method_tables) runs with ``Task.submit`` recording each submission's
parameters instead of running it (the random-init baseline's export runs for real: the dissection of the baseline
takes its bytes); every parameter dict is then pickled with cloudpickle, as Ray pickles a submission. Refs must
change no cache key: each submission's key is compared before and after.

    .venv/bin/python benchmarks/bytes_shipped.py [SPEC]   # default: deployments/specs/shapes-demo.yaml
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import cloudpickle
from _results import write_results
from prefect.tasks import Task
from prefect.utilities.callables import get_call_parameters

from flows.methods import method_tables
from flows.runners import by_reference
from interp_audit.cache_keys import content_key
from interp_audit.inputs import data_sha256, model_inputs
from interp_audit.preflight import preflight
from interp_audit.spec import load_spec
from tasks.intake import export_onnx

ROOT = Path(__file__).resolve().parents[1]
DEMO_SPEC = ROOT / "deployments" / "specs" / "shapes-demo.yaml"


class AllSubmitted(Exception):
    """Raised when the flow first waits on a recorded submission: every task has been submitted by then."""


@dataclasses.dataclass
class RecordedFuture:
    """What a recorded submission returns: the real result of the tasks the fan-out itself waits on (the
    baseline's export; the audit's own export, made beforehand), else nothing."""

    value: object = None

    def result(self):
        if self.value is None:
            raise AllSubmitted
        return self.value


def recorded_submissions(spec_path: Path, store: str) -> list[tuple[str, dict]]:
    """(task name, parameters) of every task the audit's methods submit, in submission order."""
    loaded = load_spec(spec_path)
    spec = loaded.spec
    checked = preflight(loaded, "cpu", store, None)
    inputs = model_inputs(
        spec.data, loaded.base_dir, data_sha256(spec.data, loaded.base_dir), spec.seed, spec.model.input
    )
    onnx_bytes = export_onnx.fn(
        checked.model, tuple(spec.model.input.shape), spec.model.layer_names, spec.model.token_grids
    )
    submissions = []

    def record(task, *args, wait_for=None, return_state=False, **kwargs):
        parameters = get_call_parameters(task.fn, args, kwargs)
        submissions.append((task.name, parameters))
        return RecordedFuture(task.fn(**parameters) if task.name == "random-init-baseline" else None)

    original = Task.submit
    Task.submit = record
    try:
        method_tables(
            loaded, checked, inputs, RecordedFuture(onnx_bytes), spec.selected_methods(None), "bytes-shipped", store
        )
    except AllSubmitted:
        pass
    finally:
        Task.submit = original
    return submissions


def with_refs(parameters: dict, store: str) -> dict:
    """The parameters as the flow ships them on Ray (``flows.runners.by_reference``)."""
    return {name: by_reference(store, value) for name, value in parameters.items()}


def shipped(spec_path: Path) -> tuple[list[dict], list[int]]:
    """Each submission's pickled size by value and by ref, and the sizes of the blobs written once instead."""
    rows = []
    with tempfile.TemporaryDirectory() as store:
        for name, parameters in recorded_submissions(spec_path, store):
            referenced = with_refs(parameters, store)
            rows.append(
                {
                    "task": name,
                    "bytes_today": len(cloudpickle.dumps(parameters)),
                    "bytes_with_refs": len(cloudpickle.dumps(referenced)),
                    "cache_key_unchanged": content_key(parameters) == content_key(referenced),
                }
            )
        blobs = sorted(path.stat().st_size for path in Path(store, "_blobs").iterdir())
    return rows, blobs


def per_task(rows: list[dict]) -> dict[str, float]:
    """Mean bytes one submission ships, by value (``today``) and by ref."""
    return {
        "today": round(sum(r["bytes_today"] for r in rows) / len(rows), 1),
        "with_refs": round(sum(r["bytes_with_refs"] for r in rows) / len(rows), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", nargs="?", type=Path, default=DEMO_SPEC)
    parser.add_argument("--quick", action="store_true", help="print the table without writing the results file")
    args = parser.parse_args()

    rows, blobs = shipped(args.spec)
    print(f"{'task':<24}{'today':>14}{'with refs':>14}  key unchanged")
    for row in rows:
        print(f"{row['task']:<24}{row['bytes_today']:>14,}{row['bytes_with_refs']:>14,}  {row['cache_key_unchanged']}")
    today, with_refs_total = sum(r["bytes_today"] for r in rows), sum(r["bytes_with_refs"] for r in rows)
    print(f"{'total':<24}{today:>14,}{with_refs_total:>14,}")
    print(f"blobs written once to the store: {len(blobs)}, {sum(blobs):,} bytes")
    write_results(
        "bytes_shipped",
        {
            "spec": str(args.spec.resolve().relative_to(ROOT)),
            "submissions": len(rows),
            "bytes_shipped_total": {"today": today, "with_refs": with_refs_total},
            "bytes_shipped_per_task": per_task(rows),
            "blobs_written_once": {"count": len(blobs), "bytes": sum(blobs)},
            "every_cache_key_unchanged": all(r["cache_key_unchanged"] for r in rows),
            "per_submission": rows,
        },
        args.quick,
    )


if __name__ == "__main__":
    main()
