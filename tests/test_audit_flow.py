"""End-to-end audits: real Prefect flow runs, real ONNX export and ONNX Runtime, real GX, real Parquet."""

import hashlib
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest
import torch
import yaml
from conftest import store_is_empty
from typer.testing import CliRunner

import data_contracts
from flows.cli import app
from interp_audit import report
from interp_ops import onnx_bundle

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]
runner = CliRunner()


def cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, " ".join(result.output.split())


def expected_ort_providers(device: str) -> list[str]:
    """What ONNX Runtime reports for a session on `device` on this machine: CUDA first, CPU as its fallback, when
    the device is CUDA (the CUDA provider must then be in this ONNX Runtime build); CPU alone on the CPU."""
    import onnxruntime

    if device.startswith("cuda"):
        assert "CUDAExecutionProvider" in onnxruntime.get_available_providers(), onnxruntime.get_available_providers()
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def test_audit_of_a_grayscale_user_model_end_to_end(gray_spec, tmp_path):
    spec = gray_spec()
    code, output = cli("run", spec)
    assert code == 0, output
    assert "status: passed" in output and "run id:" in output
    store = tmp_path / "reports"
    runs = report.list_runs(store)
    assert len(runs) == 1
    run = runs.iloc[0]
    assert (run.status, run.model_name, run.model_version, run.seed) == ("passed", "gray-net", "7", 3)
    assert run.weights_sha256 == hashlib.sha256((tmp_path / "gray.pt").read_bytes()).hexdigest()
    assert run.spec_sha256 == hashlib.sha256(spec.read_bytes()).hexdigest()
    # `--device auto` (the default) takes CUDA where torch sees it, and ONNX Runtime must then run on it
    assert run.device == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert list(run.ort_providers) == expected_ort_providers(run.device)

    # read back with bare pyarrow: hive partitions, one file per table for the run
    parity = ds.dataset(store / "onnx_parity", partitioning="hive").to_table().to_pandas()
    assert sorted(parity.output) == ["body.act2", "body.conv1", "logits"]
    assert (parity.max_abs_diff <= 1e-4).all() and (parity.argmax_agreement == 1.0).all()
    assert list(parity.set_index("output").loc["body.conv1", "shape"]) == [4, 26, 26]

    predictions = report.load_table(store, "predictions")
    assert len(predictions) == 12 and predictions.probability.between(0, 1).all()
    assert set(predictions.label) <= {0, 1, 2}

    contracts = report.load_table(store, "contract_results")
    assert contracts.success.all()
    assert {"audit_runs", "onnx_parity", "predictions", "contract_results"} <= set(contracts.table_name)
    threshold = contracts[(contracts.table_name == "onnx_parity") & (contracts.details.str.contains("0.0001"))]
    assert len(threshold) == 1

    code, output = cli(
        "report",
        "query",
        "SELECT output, max_abs_diff FROM onnx_parity ORDER BY output",
        "--store",
        store,
        "--format",
        "csv",
    )
    assert code == 0 and output.startswith("output,max_abs_diff body.act2,")
    code, output = cli("report", "show", run.run_id[:8], "--store", store)
    assert code == 0 and "gray-net v7 (passed)" in output and "ONNX parity" in output
    code, output = cli("report", "list", "--store", store)
    assert code == 0 and run.run_id in output

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["interp-audit-gray-audit"]))
        )
    assert any(run.run_id in artifact.data and "passed" in artifact.data for artifact in artifacts)


def test_failed_contract_publishes_with_status_and_exit_1(gray_spec, tmp_path):
    code, output = cli("run", gray_spec(seed=11, contracts={"onnx.max_abs_diff": 0.0}))
    assert code == 1, output
    assert "status: failed_contracts" in output
    run = report.list_runs(tmp_path / "reports").iloc[0]
    assert run.status == "failed_contracts"
    results = report.load_table(tmp_path / "reports", "contract_results", run_id=run.run_id)
    failed = results[~results.success]
    assert failed[["table_name", "expectation", "column"]].values.tolist() == [
        ["onnx_parity", "expect_column_max_to_be_between", "max_abs_diff"]
    ]


def test_crash_then_resume_recomputes_nothing_that_finished(gray_spec, tmp_path, monkeypatch):
    spec = gray_spec(seed=21)
    calls = {"export": 0, "torch": 0, "ort": 0}

    def counting(name, original):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return original(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(onnx_bundle, "export_torch", counting("export", onnx_bundle.export_torch))
    monkeypatch.setattr(onnx_bundle, "run_torch", counting("torch", onnx_bundle.run_torch))
    monkeypatch.setattr(onnx_bundle, "run_session", counting("ort", onnx_bundle.run_session))
    original_validate = data_contracts.validate_tables

    def crash(*args, **kwargs):
        raise OSError("disk vanished")

    monkeypatch.setattr(data_contracts, "validate_tables", crash)
    code, output = cli("run", spec)
    assert code == 3 and "disk vanished" in output
    assert store_is_empty(tmp_path / "reports")
    assert calls == {"export": 1, "torch": 1, "ort": 2}  # ort: the predict and parity tasks

    monkeypatch.setattr(data_contracts, "validate_tables", original_validate)
    code, output = cli("run", spec)
    assert code == 0, output
    assert calls == {"export": 1, "torch": 1, "ort": 2}  # nothing that had finished ran again
    resumed = report.list_runs(tmp_path / "reports").run_id.tolist()
    assert len(resumed) == 1

    # a clean run, with every cache refreshed, publishes the same tables
    from prefect.settings import PREFECT_TASKS_REFRESH_CACHE, temporary_settings

    clean_store = tmp_path / "clean"
    with temporary_settings({PREFECT_TASKS_REFRESH_CACHE: True}):
        code, output = cli("run", spec, "--store", clean_store)
    assert code == 0, output
    assert calls == {"export": 2, "torch": 2, "ort": 4}
    for table in ("onnx_parity", "predictions", "contract_results"):
        got = report.load_table(tmp_path / "reports", table).drop(columns=["run_id"])
        want = report.load_table(clean_store, table).drop(columns=["run_id"])
        assert got.astype(str).equals(want.astype(str)), table


def test_onnx_file_from_elsewhere_audits_by_tensor_name(tmp_path, monkeypatch):
    """An ONNX file exported by the legacy TorchScript exporter (not ours), tabular input, npy data."""
    from user_models import tabular_mlp

    model = tabular_mlp().eval()
    torch.onnx.export(
        model,
        (torch.zeros(1, 30),),
        str(tmp_path / "mlp.onnx"),
        dynamo=False,
        input_names=["features"],
        output_names=["scores"],
        dynamic_axes={"features": {0: "n"}},
    )
    rows = np.random.default_rng(0).random((20, 30)).astype(np.float32)
    np.save(tmp_path / "rows.npy", rows)
    import onnx

    tensors = onnx_bundle.graph_tensor_names(onnx.load(tmp_path / "mlp.onnx"))
    hidden = next(name for name in tensors if "Relu" in name or "act" in name)
    spec = {
        "name": "tabular",
        "model": {
            "source": "onnx",
            "name": "mlp",
            "version": "2024.1",
            "path": "mlp.onnx",
            "input": {"shape": [30], "class_names": ["benign", "malignant"]},
            "layers": [hidden],
        },
        "data": "rows.npy",
        "report": {"store": "reports"},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.chdir(tmp_path)  # the store in the spec is relative to the working directory
    code, output = cli("run", tmp_path / "spec.yaml")
    assert code == 0, output
    run = report.list_runs(tmp_path / "reports").iloc[0]
    assert run.model_source == "onnx" and pd.isna(run.weights_sha256) and run.model_version == "2024.1"
    predictions = report.load_table(tmp_path / "reports", "predictions")
    expected = model(torch.from_numpy(rows)).argmax(1).numpy()
    assert (predictions.sort_values("sample_id").predicted.to_numpy() == expected).all()
    assert set(predictions.predicted_name) <= {"benign", "malignant"}
    assert report.load_table(tmp_path / "reports", "onnx_parity").empty


def test_export_failure_names_the_operation_and_publishes_nothing(gray_spec, tmp_path):
    path = gray_spec()
    path.write_text(path.read_text().replace(":gray_net", ":not_exportable"))
    code, output = cli("run", path)
    assert code == 3, output
    assert "ONNX export failed at `if logits.sum() > 0:` in forward (user_models.py:" in output
    assert store_is_empty(tmp_path / "reports")


def test_schedule_serves_a_deployment_with_the_cron_and_runs_it(gray_spec, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    spec = gray_spec(seed=31, schedule={"cron": "15 4 * * 1", "timezone": "Europe/Berlin"})
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    server = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "schedule", str(spec)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deployment = None
        with get_client(sync_client=True) as client:
            for _ in range(120):
                try:
                    deployment = client.read_deployment_by_name("interp-audit/gray-audit")
                    break
                except Exception:
                    assert server.poll() is None, server.stdout.read().decode()
                    time.sleep(1)
            assert deployment is not None, "the deployment never appeared"
            crons = [(s.schedule.cron, s.schedule.timezone) for s in deployment.schedules]
            assert crons == [("15 4 * * 1", "Europe/Berlin")]
        flow_run = run_deployment("interp-audit/gray-audit", timeout=240)
        assert flow_run.state.is_completed(), flow_run.state
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    assert report.list_runs(tmp_path / "reports").status.tolist() == ["passed"]


def test_gpu_work_takes_a_slot_of_the_gpu_limit():
    """Needs no GPU: we call the guard as a CUDA task would and watch the real limit on the test server."""
    from prefect.client.orchestration import get_client

    from tasks.gpu import GPU_LIMIT, compute_slot, ensure_gpu_limit

    ensure_gpu_limit()
    ensure_gpu_limit()  # idempotent
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(GPU_LIMIT)
        assert limit.limit >= 1
        with compute_slot("cuda:0"):
            assert client.read_global_concurrency_limit_by_name(GPU_LIMIT).active_slots == 1
        assert client.read_global_concurrency_limit_by_name(GPU_LIMIT).active_slots == 0
        with compute_slot("cpu"):
            assert client.read_global_concurrency_limit_by_name(GPU_LIMIT).active_slots == 0


def test_cpu_work_runs_at_most_cpu_tasks_at_once():
    """Every task a thread of the pool, as the thread runner runs them: no more than CPU_TASKS compute at once, so an
    audit of many batches holds the memory of a few."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from tasks.gpu import CPU_TASKS, compute_share

    running, most = [0], [0]
    lock = threading.Lock()

    def work(_):
        with compute_share("cpu"):
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            time.sleep(0.05)
            with lock:
                running[0] -= 1

    with ThreadPoolExecutor(max_workers=4 * CPU_TASKS) as pool:
        list(pool.map(work, range(8 * CPU_TASKS)))
    assert most[0] == CPU_TASKS
