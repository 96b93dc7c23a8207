"""Task cache keys come from content: the same in every process (whatever PYTHONHASHSEED), different whenever a
parameter a task reads changes; a re-run audit serves every computing task from the cache.

Run as a script, this file prints every task's key for the representative parameters below (the subprocesses
of the stability test).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(__file__).resolve().parent / "assets"


def task_cases() -> dict:
    """Every computing task with realistic parameters of every kind it takes: name -> (task, parameters)."""
    from interp_audit.inputs import ModelInputs
    from interp_audit.intake import ModelRef
    from interp_audit.spec import ActivationMaxSpec, DissectionSpec, InputSpec, LimeSpec
    from interp_ops.dissection import DissectionResult
    from interp_ops.token_grid import TokenGrid
    from tasks.actmax import find_exemplars, render_unit_batch
    from tasks.dissection import dissect_layer, dissection_tables, export_random_baseline
    from tasks.inference import check_parity, predict
    from tasks.intake import export_onnx
    from tasks.lime import explain_with_lime

    rng = np.random.default_rng(0)
    names = ["circle", "square", "triangle"]
    ref = ModelRef(
        source="torch",
        path="/models/gray.pt",
        sha256="a" * 64,
        factory=f"{ASSETS / 'user_models.py'}:gray_net",
        trust_pickle=False,
        base_dir="/models",
        version="7",
    )
    input_spec = InputSpec(shape=[1, 28, 28], range=(0.0, 1.0), mean=[0.5], std=[0.5], class_names=names)
    inputs = ModelInputs(
        ids=["s0", "s1", "s2"],
        x=rng.random((3, 1, 28, 28), dtype=np.float32),
        labels=np.array([0, 1, 2]),
        class_names=names,
        feature_names=["f0"],
    )
    onnx = b"\x08\x07onnx-graph" * 20
    layers = ["body.conv1", "body.act2"]
    lime = LimeSpec(
        samples=["s0", "s1"],
        labels=[0, "square"],
        num_samples=300,
        heldout_samples=100,
        hide=0.0,
        kernel_width=0.3,
        samples_per_task=2,
        segmentation={"method": "slic", "n_segments": 30},
    )
    actmax = ActivationMaxSpec(layers=["body.conv1"], units=[0, 1], steps=8, image_size=28, exemplars=4)
    concepts = "builtin:concepts?n=60&size=48"
    dissection = DissectionSpec(layers=["body.conv1"], concepts=concepts, quantile=0.01, baseline="random_init")

    def result(layer, seed):
        r = np.random.default_rng(seed)
        return DissectionResult(
            layer=layer,
            thresholds=r.random(4),
            iou=r.random((4, 3)),
            label_ids=np.array([1, 2, 5]),
            best_label=np.array([1, 2, 5, 1]),
            best_iou=r.random(4),
        )

    common = dict(input_spec=input_spec, seed=3, device="cpu")
    grids = {"body.conv1": TokenGrid(2, 2, skip=1)}
    return {
        "export-onnx": (export_onnx, dict(model=ref, input_shape=(1, 28, 28), layers=layers, grids=grids)),
        "predict": (predict, dict(onnx_bytes=onnx, inputs=inputs, device="cpu")),
        "onnx-parity": (
            check_parity,
            dict(model=ref, onnx_bytes=onnx, inputs=inputs, layers=layers, grids=grids, device="cpu"),
        ),
        "lime": (
            explain_with_lime,
            dict(
                onnx_bytes=onnx,
                x=inputs.x[:2],
                sample_ids=["s0", "s1"],
                sample_keys=[0, 1],
                labels=[0, 1],
                settings=lime.explainer_settings(),
                class_names=names,
                training_data=rng.random((5, 2)),
                feature_names=["a", "b"],
                **common,
            ),
        ),
        "actmax-render": (
            render_unit_batch,
            dict(
                model=ref,
                layer="body.conv1",
                grid=grids["body.conv1"],
                units=[0, 1],
                settings=actmax.render_settings(),
                **common,
            ),
        ),
        "actmax-exemplars": (
            find_exemplars,
            dict(
                onnx_bytes=onnx, inputs=inputs, units={"body.conv1": [0, 1, 2]}, k=4, objective="channel", device="cpu"
            ),
        ),
        "random-init-baseline": (
            export_random_baseline,
            dict(model=ref, input_shape=(1, 28, 28), layers=layers, grids=grids, seed=3),
        ),
        "dissection": (
            dissect_layer,
            dict(
                onnx_bytes=onnx,
                layer="body.conv1",
                concepts_uri=concepts,
                base_dir="/specs",
                concepts_fingerprint="c" * 64,
                quantile=dissection.quantile,
                batch_size=dissection.batch_size,
                **common,
            ),
        ),
        "dissection-tables": (
            dissection_tables,
            dict(
                results=[result("body.conv1", 1)],
                baselines=[result("body.conv1", 2)],
                concepts_uri=concepts,
                base_dir="/specs",
                seed=3,
                iou_threshold=0.04,
            ),
        ),
    }


def task_key(task, parameters: dict) -> str:
    """The key Prefect computes for this call (parameters bound as the engine binds them, defaults included)."""
    import inspect

    bound = inspect.signature(task.fn).bind(**parameters)
    bound.apply_defaults()
    return task.cache_policy.compute_key(
        task_ctx=SimpleNamespace(task=task), inputs=dict(bound.arguments), flow_parameters={}
    )


def all_keys() -> dict:
    from interp_audit.cache_keys import canonical_json

    keys = {name: task_key(task, parameters) for name, (task, parameters) in task_cases().items()}
    kinds = {
        "set": {"b", "a", "c", "interp"},
        "frozenset": frozenset({("x", 1), ("y", 2)}),
        "dict": {"z": 1, "a": {"m": [1, 2]}, "k": None},
        "path": Path("/data/x.npy"),
    }
    keys["kinds"] = canonical_json(kinds)
    keys["hash_of_a_str"] = hash("interp-audit")  # differs between the processes: proves randomisation is on
    return keys


# --- (a) the same key in every process ------------------------------------------------------------------


def keys_in_subprocess(hash_seed: str) -> dict:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, __file__], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_task_key_is_the_same_across_processes_with_different_hash_seeds():
    """This process and a child with another PYTHONHASHSEED (one child: importing Prefect and torch takes ~10 s)."""
    other = keys_in_subprocess("2" if os.environ.get("PYTHONHASHSEED") == "1" else "1")
    here = all_keys()
    assert other.pop("hash_of_a_str") != here.pop("hash_of_a_str")  # string hashing differs between the two
    assert set(here) == set(task_cases()) | {"kinds"}
    assert here == other


# --- keys change with every parameter a task reads ------------------------------------------------------


def variants(value):
    """(where, changed value) pairs, each differing from ``value`` in one place."""
    if value is None:
        yield "", 0
    elif isinstance(value, bool):
        yield "", not value
    elif isinstance(value, (int, np.integer)):
        yield "", value + 1
    elif isinstance(value, float):
        yield "", value + 0.5
    elif isinstance(value, str):
        yield "", value + "x"
    elif isinstance(value, bytes):
        yield "", value + b"\0"
    elif isinstance(value, np.ndarray):
        changed = value.copy()
        changed.flat[0] += 1
        yield "[0]", changed
        yield ".dtype", value.astype(np.float32 if value.dtype == np.float64 else np.float64)
        if value.ndim > 1:
            yield ".shape", value.reshape(-1)
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            for where, changed in variants(getattr(value, name)):
                yield f".{name}{where}", value.model_copy(update={name: changed})
    elif dataclasses.is_dataclass(value):
        for field in dataclasses.fields(value):
            for where, changed in variants(getattr(value, field.name)):
                yield f".{field.name}{where}", dataclasses.replace(value, **{field.name: changed})
    elif isinstance(value, (list, tuple)):
        for where, changed in variants(value[0]):
            yield f"[0]{where}", type(value)([changed, *value[1:]])
        if isinstance(value, list):  # tuples here have a fixed length (a range, a shape)
            yield "[+]", [*value, value[-1]]
            yield "[-]", value[1:]
    elif isinstance(value, dict):
        key = next(iter(value))
        for where, changed in variants(value[key]):
            yield f"[{key}]{where}", {**value, key: changed}
        yield "[key]", {key + "x": value[key], **{k: v for k, v in value.items() if k != key}}
    else:
        raise AssertionError(f"no variants for {type(value)}")


VALID = {  # parameters whose arbitrary variants would not parse: one real change each
    "concepts_uri": ["builtin:concepts?n=61&size=48"],
    "data_uri": ["builtin:shapes?split=val&n=13"],
}


def test_keys_change_with_every_parameter_a_task_takes():
    """Tasks take exactly what they read (LIME and render settings without the samples, units or batching the
    flow decides), so every change of every parameter must change the key."""
    for name, (task, parameters) in task_cases().items():
        base = task_key(task, parameters)
        assert task_key(task, dict(parameters)) == base, name
        changes = 0
        for parameter, value in parameters.items():
            found = [("", v) for v in VALID[parameter]] if parameter in VALID else list(variants(value))
            for where, changed in found:
                where = parameter + where
                key = task_key(task, {**parameters, parameter: changed})
                assert key != base, f"{name}: {where} changed and the key did not"
                changes += 1
        assert changes >= len(parameters), name


def test_task_settings_leave_out_only_what_the_flow_decides():
    from interp_audit.spec import ActivationMaxSpec, LimeSpec

    assert set(LimeSpec.model_fields) - set(LimeSpec().explainer_settings()) == {
        "samples",
        "labels",
        "samples_per_task",
        "sanity",  # which samples and copies the sanity task explains: its own parameters
    }
    assert set(ActivationMaxSpec.model_fields) - set(ActivationMaxSpec().render_settings()) == {
        "layers",
        "units",
        "exemplars",
        "sanity",  # whether the flow also renders the re-drawn copy: a task parameter of its own (random_init_seed)
    }


def test_the_weights_and_a_factory_file_key_by_content(tmp_path):
    from interp_audit.cache_keys import content_key
    from interp_audit.intake import ModelRef

    factory = tmp_path / "net.py"
    factory.write_text("def build(): ...\n")
    ref = ModelRef(
        source="torch",
        path=str(tmp_path / "w.pt"),
        sha256="a" * 64,
        factory="net.py:build",
        trust_pickle=False,
        base_dir=str(tmp_path),
        version="1",
    )
    key = content_key({"model": ref})
    assert content_key({"model": dataclasses.replace(ref, sha256="b" * 64)}) != key  # same path, other weights
    factory.write_text("def build(): return 1\n")
    assert content_key({"model": ref}) != key  # same weights and factory name, other module code


def test_dissection_tables_key_on_the_concepts_content(monkeypatch):
    import interp_ops.concepts

    task, parameters = task_cases()["dissection-tables"]
    key = task_key(task, parameters)
    monkeypatch.setattr(interp_ops.concepts, "concepts_fingerprint", lambda *args, **kwargs: "changed")
    assert task_key(task, parameters) != key  # same path, other concept files


def test_a_value_without_a_canonical_form_is_a_type_error_never_a_pickle():
    from interp_audit.cache_keys import canonical, content_key

    with pytest.raises(TypeError, match=r"parameters\['inputs'\]\[1\]: builtins.object"):
        content_key({"inputs": [1, object()]})
    assert canonical(np.array([1, None], dtype=object)) != canonical(np.array([1, 2], dtype=object))
    assert canonical({1: "a"}) != canonical({"1": "a"})
    assert canonical(np.float32(1.0)) != canonical(1.0)


# --- (b) end to end: a re-run in another process recomputes nothing ------------------------------------

CACHED_TASKS = {
    "export-onnx",
    "predict",
    "onnx-parity",
    "lime",
    "actmax-render",
    "actmax-exemplars",
    "random-init-baseline",
    "dissection",
    "dissection-tables",
}


def task_run_states(run_id: str, expected: int) -> dict[str, list[str]]:
    """Task name -> state names of the flow run's task runs, once all have reached a final state."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + 30
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(run_id)])))
        final = [run for run in runs if run.state is not None and run.state.is_final()]
        if (len(final) == len(runs) >= expected) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    states: dict[str, list[str]] = {}
    for run in runs:
        states.setdefault(run.name.rsplit("-", 1)[0], []).append(run.state.name)  # names: "<task>-<suffix>"
    return states


def task_run_spans(run_id: str) -> dict[str, list[tuple]]:
    """Task name -> (start, end) of each of the flow run's (finished) task runs."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(run_id)])))
    spans: dict[str, list[tuple]] = {}
    for run in runs:
        spans.setdefault(run.name.rsplit("-", 1)[0], []).append((run.start_time, run.end_time))
    return spans


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_a_rerun_in_another_process_serves_every_computing_task_from_the_cache(gray_spec, tmp_path):
    from prefect.settings import PREFECT_API_URL

    from interp_audit import report

    spec = gray_spec(
        ops={
            "lime": {
                "samples": 2,
                "samples_per_task": 1,
                "num_samples": 40,
                "stability_seeds": 1,
                "heldout_samples": 0,
                "segmentation": {"method": "slic", "n_segments": 8},
            },
            "activation_max": {"layers": ["body.conv1"], "units": "first:2", "steps": 4, "exemplars": 2},
            "dissection": {"layers": ["body.conv1"], "concepts": "builtin:concepts?n=12&size=28"},
        },
        data="builtin:shapes?split=val&n=6",
    )
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PYTHONPATH": str(ROOT),
    }

    def audit(hash_seed: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "flows.cli", "run", str(spec)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=240,
            env={**env, "PYTHONHASHSEED": hash_seed},
        )
        assert done.returncode in (0, 1), done.stdout + done.stderr  # 1: a contract failed, still published
        assert "computing cache key" not in done.stdout + done.stderr  # a key that fails is logged, runs uncached
        runs = report.list_runs(tmp_path / "reports").sort_values("started_at")
        return runs.run_id.iloc[-1]

    first = audit("11")
    second = audit("22")
    assert first != second
    computed = task_run_states(first, expected=len(CACHED_TASKS))
    served = task_run_states(second, expected=sum(len(states) for states in computed.values()))
    assert set(computed) >= CACHED_TASKS, computed
    assert not any("Cached" in computed[name] for name in CACHED_TASKS), computed
    # torch compute never runs beside a torch export, which switches oneDNN off for the whole process while it
    # traces (a render beside it would use other kernels, its floats depending on timing)
    spans = task_run_spans(first)
    exported = max(end for _, end in spans["random-init-baseline"])
    assert all(start >= exported for name in ("actmax-render", "onnx-parity") for start, _ in spans[name]), spans
    assert {name: len(states) for name, states in served.items()} == {
        name: len(states) for name, states in computed.items()
    }
    for name in CACHED_TASKS:
        assert set(served[name]) == {"Cached"}, (name, served)
    assert len(served["lime"]) == 2 and len(served["dissection"]) == 2  # two batches; the model and its baseline
    assert all(state != "Cached" for name, states in served.items() if name not in CACHED_TASKS for state in states)

    # a setting only the tables step reads recomputes the tables, not the pass over the concept set
    text = spec.read_text()
    assert "iou_threshold" not in text
    spec.write_text(
        text.replace(
            "concepts: builtin:concepts?n=12&size=28",
            "concepts: builtin:concepts?n=12&size=28\n    iou_threshold: 0.02",
        )
    )
    third = task_run_states(audit("33"), expected=sum(len(states) for states in computed.values()))
    assert set(third["dissection-tables"]) == {"Completed"}, third
    for name in CACHED_TASKS - {"dissection-tables"}:
        assert set(third[name]) == {"Cached"}, (name, third)

    store = tmp_path / "reports"
    for table in ("lime_attributions", "actmax_units", "dissection_units", "onnx_parity"):
        a = report.load_table(store, table, run_id=first).drop(columns=["run_id"])
        b = report.load_table(store, table, run_id=second).drop(columns=["run_id"])
        pd.testing.assert_frame_equal(a, b, obj=table)


if __name__ == "__main__":
    print(json.dumps(all_keys(), sort_keys=True))


EXPORT_HASH = """
import hashlib, torch, interp_ops
from user_models import gray_net
from interp_ops.onnx_bundle import export_torch
torch.manual_seed(0)
print(interp_ops.__file__)
print(hashlib.sha256(export_torch(gray_net(), (1, 28, 28), ["body.conv1"])).hexdigest())
"""


def test_the_exported_onnx_is_the_same_wherever_the_code_is_installed(tmp_path):
    """The exporter records each node's Python stack (files, line numbers); kept, it would make the model's hash,
    and every cache key built on the ONNX bytes, differ between two checkouts of the same commit."""
    import shutil

    copy = tmp_path / "elsewhere"
    shutil.copytree(ROOT / "interp_ops", copy / "interp_ops", ignore=shutil.ignore_patterns("__pycache__"))

    def export_from(code_root: Path) -> list[str]:
        done = subprocess.run(
            [sys.executable, "-c", EXPORT_HASH],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PYTHONPATH": f"{code_root}{os.pathsep}{ASSETS}"},
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    here, there = export_from(ROOT), export_from(copy)
    assert here[0].startswith(str(ROOT)) and there[0].startswith(str(copy))  # two installs really were used
    assert here[1] == there[1]
