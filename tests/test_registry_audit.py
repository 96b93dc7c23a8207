"""Registry-driven audits through real flow runs: a real MLflow registry on SQLite, real Prefect events,
triggers and served deployments on the session's test server."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from conftest import ASSETS, store_is_empty
from typer.testing import CliRunner

from flows.cli import app
from interp_audit import report

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("prefect_server"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]
runner = CliRunner()
GRAY_FACTORY = f"{ASSETS / 'user_models.py'}:gray_net"


def cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, " ".join(result.output.split())


@pytest.fixture
def registry_uri(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    return f"sqlite:///{tmp_path / 'registry' / 'mlflow.db'}"


def register_gray(uri: str, name: str = "gray-net", seed: int = 0) -> str:
    import torch
    from user_models import GrayNet

    from interp_audit.registry import log_model

    torch.manual_seed(seed)
    return log_model(GrayNet(), name, GRAY_FACTORY, tracking_uri=uri)


def write_spec(tmp_path, uri: str, name: str = "gray-net", **model) -> str:
    spec = {
        "name": f"{name}-audit",
        "seed": 0,
        "model": {
            "source": "mlflow",
            "name": name,
            "version": "latest",
            "tracking_uri": uri,
            "input": {"shape": [1, 28, 28], "mean": [0.5], "std": [0.5]},
            "layers": ["body.conv1"],
            **model,
        },
        "data": "builtin:shapes?split=val&n=6",
        "report": {"store": str(tmp_path / "reports")},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def set_fluent_uris(uri: str, monkeypatch) -> None:
    """Point MLflow's fluent API at the test registry for this test only (``mlflow.set_tracking_uri`` would stay
    set for the tests after it in this process, tests/test_registry.py's among them)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)


def version_tags(uri: str, name: str, version: str) -> dict:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version(name, version).tags


def test_latest_and_alias_resolve_to_numbers_and_the_verdict_is_written_back(tmp_path, registry_uri):
    from mlflow import MlflowClient

    register_gray(registry_uri, seed=0)
    register_gray(registry_uri, seed=1)
    MlflowClient(tracking_uri=registry_uri, registry_uri=registry_uri).set_registered_model_alias(
        "gray-net", "champion", "1"
    )

    code, output = cli("run", write_spec(tmp_path, registry_uri, alias_on_pass="audited"))
    assert code == 0, output
    code, output = cli("run", write_spec(tmp_path, registry_uri, version="@champion"))
    assert code == 0, output
    runs = report.list_runs(tmp_path / "reports")
    assert runs.model_version.tolist() == ["2", "1"]  # never 'latest' or '@champion'
    tags = version_tags(registry_uri, "gray-net", "2")
    assert tags["interp_audit.status"] == "passed" and tags["interp_audit.run_id"] == runs.run_id.iloc[0]
    assert tags["interp_audit.report"]
    client = MlflowClient(tracking_uri=registry_uri, registry_uri=registry_uri)
    assert str(client.get_model_version_by_alias("gray-net", "audited").version) == "2"


def test_an_onnx_flavor_version_is_audited_as_onnx(tmp_path, registry_uri, monkeypatch):
    import mlflow
    import mlflow.onnx
    import onnx
    import torch
    from user_models import gray_net

    onnx_path = tmp_path / "gray.onnx"
    torch.onnx.export(
        gray_net(),
        (torch.zeros(1, 1, 28, 28),),
        str(onnx_path),
        dynamo=False,
        input_names=["image"],
        output_names=["scores"],
        dynamic_axes={"image": {0: "n"}, "scores": {0: "n"}},
    )
    set_fluent_uris(registry_uri, monkeypatch)
    experiment = mlflow.create_experiment("onnx", artifact_location=str(tmp_path / "artifacts"))
    with mlflow.start_run(experiment_id=experiment):
        mlflow.onnx.log_model(
            onnx.load(str(onnx_path)), name="model", registered_model_name="gray-onnx", pip_requirements=["onnx"]
        )
    code, output = cli("run", write_spec(tmp_path, registry_uri, name="gray-onnx", layers=[]))
    assert code == 0, output
    runs = report.list_runs(tmp_path / "reports")
    assert runs.model_version.tolist() == ["1"] and runs.weights_sha256.isna().all()
    assert version_tags(registry_uri, "gray-onnx", "1")["interp_audit.status"] == "passed"


def test_a_pickled_version_audits_only_when_trusted(tmp_path, registry_uri, monkeypatch):
    import mlflow
    import mlflow.pytorch
    from user_models import gray_net

    set_fluent_uris(registry_uri, monkeypatch)
    experiment = mlflow.create_experiment("pickled", artifact_location=str(tmp_path / "artifacts"))
    with mlflow.start_run(experiment_id=experiment):
        mlflow.pytorch.log_model(
            gray_net(),
            name="model",
            registered_model_name="gray-pickled",
            serialization_format="pickle",
            pip_requirements=["torch"],
        )
    code, output = cli("run", write_spec(tmp_path, registry_uri, name="gray-pickled"))
    assert code == 2 and "holds a pickled torch module" in output and "trust_pickle: true" in output, output
    assert store_is_empty(tmp_path / "reports")
    code, output = cli("run", write_spec(tmp_path, registry_uri, name="gray-pickled", trust_pickle=True))
    assert code == 0, output
    assert report.list_runs(tmp_path / "reports").model_version.tolist() == ["1"]


@pytest.mark.parametrize(
    "model, message",
    [
        ({"name": "no-such-model"}, "no registered model 'no-such-model'"),
        ({"version": "9"}, "gray-net has no version 9; versions: 1"),
    ],
)
def test_a_missing_model_or_version_is_bad_input(tmp_path, registry_uri, model, message):
    register_gray(registry_uri)
    code, output = cli("run", write_spec(tmp_path, registry_uri, **model))
    assert code == 2 and message in output, output
    assert store_is_empty(tmp_path / "reports")


def test_an_unreachable_registry_is_retried_then_exit_3(tmp_path, registry_uri, monkeypatch):
    """The task's retries, with its delays shortened here (the real ones, about a minute in all, ride out a 30 s
    outage in tests/test_fleet_faults.py)."""
    import tasks.registry

    attempts = []
    fetch = tasks.registry.registry_model

    def counting(*args, **kwargs):
        attempts.append(time.monotonic())
        return fetch(*args, **kwargs)

    monkeypatch.setattr(tasks.registry, "registry_model", counting)
    retries = tasks.registry.RETRIES["retries"]
    monkeypatch.setattr(tasks.registry.fetch_registered_model, "retry_delay_seconds", [0.5] * retries)
    code, output = cli("run", write_spec(tmp_path, "http://127.0.0.1:9"))
    assert code == 3 and "127.0.0.1:9" in output, output
    assert len(attempts) == 1 + retries, attempts  # the first try and each retry
    assert (np.diff(attempts) >= 0.45).all(), np.diff(attempts)  # each retry waited its delay
    assert store_is_empty(tmp_path / "reports")


def test_the_watcher_triggers_one_audit_per_new_version(tmp_path, registry_uri):
    """Acceptance: served watcher + triggered audit; a second look or a repeated event adds no run."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.events import emit_event
    from prefect.settings import PREFECT_API_URL

    from flows.registry import EVENT

    spec = write_spec(tmp_path, registry_uri)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    server = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "watch", str(spec), "--interval", "3600"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        with get_client(sync_client=True) as client:
            for _ in range(120):
                try:
                    client.read_deployment_by_name("interp-audit-registry-version/gray-net-audit")
                    client.read_deployment_by_name("interp-audit-watch/gray-net-audit-watch")
                    break
                except Exception:
                    assert server.poll() is None, server.stdout.read().decode()
                    time.sleep(1)
        # the model has no version yet: the first look records that nothing predates the watcher
        first = run_deployment("interp-audit-watch/gray-net-audit-watch", timeout=120)
        assert first.state.is_completed(), first.state
        version = register_gray(registry_uri)
        second = run_deployment("interp-audit-watch/gray-net-audit-watch", timeout=120)
        assert second.state.result() == [version]
        wait_for_runs(tmp_path / "reports", 1)
        for _ in range(60):  # the verdict is written back just after the run is published
            if "interp_audit.status" in version_tags(registry_uri, "gray-net", version):
                break
            time.sleep(1)
        assert version_tags(registry_uri, "gray-net", version)["interp_audit.status"] == "passed"

        third = run_deployment("interp-audit-watch/gray-net-audit-watch", timeout=120)
        assert third.state.result() == []
        for _ in range(2):  # the same announcement again, twice
            emit_event(
                event=EVENT,
                resource={
                    "prefect.resource.id": f"mlflow.model-version.gray-net.{version}",
                    "interp_audit.spec": "gray-net-audit",  # the spec's name
                },
                payload={"name": "gray-net", "version": version},
            )
        # three triggered runs in all: the audit, then two that find it done and add nothing
        assert wait_for_triggered_runs("interp-audit-registry-version/gray-net-audit", 3) == ["COMPLETED"] * 3
        assert len(report.list_runs(tmp_path / "reports")) == 1
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def wait_for_runs(store, count: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not store_is_empty(store) and len(report.list_runs(store)) >= count:
            return
        time.sleep(2)
    raise AssertionError(f"no {count} published run(s) in {store} after {timeout} s")


def wait_for_triggered_runs(deployment: str, count: int, timeout: float = 180) -> list[str]:
    """States of the deployment's flow runs once `count` of them are final."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        deployment_id = client.read_deployment_by_name(deployment).id
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
            )
            if sum(run.state.is_final() for run in runs) >= count:
                return sorted(run.state.type.value for run in runs)
            time.sleep(2)
    raise AssertionError(f"fewer than {count} finished runs of {deployment} after {timeout} s")


def test_a_failed_gate_fails_the_run_and_keeps_the_alias_off(tmp_path, registry_uri):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    register_gray(registry_uri)
    # a region covering the whole image holds all of the attribution: a maximum of one half must fail
    gate = {"name": "whole-image", "metric": "lime.region_share", "region": {"corners": 0.5}, "max": 0.5}
    spec = write_spec(tmp_path, registry_uri, alias_on_pass="audited")
    text = yaml.safe_load(spec.read_text())
    text["ops"] = {
        "lime": {
            "samples": 2,
            "num_samples": 50,
            "stability_seeds": 1,
            "heldout_samples": 0,
            "segmentation": {"method": "slic", "n_segments": 8},
        }
    }
    text["gates"] = [gate]
    spec.write_text(yaml.safe_dump(text))
    code, output = cli("run", spec)
    assert code == 1 and "status: failed_gates (whole-image)" in output, output
    (gate_row,) = report.load_table(tmp_path / "reports", "gate_results").itertuples()
    assert gate_row.outcome == "failed" and gate_row.value == pytest.approx(1.0)
    assert version_tags(registry_uri, "gray-net", "1")["interp_audit.status"] == "failed_gates"
    with pytest.raises(MlflowException):
        MlflowClient(tracking_uri=registry_uri, registry_uri=registry_uri).get_model_version_by_alias(
            "gray-net", "audited"
        )


def test_the_alias_waits_for_the_sign_off_when_the_spec_asks_for_one(tmp_path, registry_uri):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from test_review_gates import paused_run, run_in_thread

    register_gray(registry_uri)
    spec = write_spec(tmp_path, registry_uri, alias_on_pass="audited")
    text = yaml.safe_load(spec.read_text())
    text["review"] = {"wait_for_sign_off": True, "timeout_seconds": 120}
    spec.write_text(yaml.safe_dump(text))
    client = MlflowClient(tracking_uri=registry_uri, registry_uri=registry_uri)

    thread, outcome = run_in_thread(spec)
    run_id = paused_run(tmp_path / "reports", thread)
    assert version_tags(registry_uri, "gray-net", "1")["interp_audit.status"] == "passed"  # tagged at once
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias("gray-net", "audited")  # but no alias before the sign-off
    assert cli("review", run_id, "--approve", "--reviewer", "ada", "--store", tmp_path / "reports")[0] == 0
    thread.join(120)
    assert outcome["summary"]["review"] == "approved", outcome
    assert str(client.get_model_version_by_alias("gray-net", "audited").version) == "1"


def test_a_version_whose_audit_crashed_three_times_is_not_run_again():
    """The deployment's crash trigger re-runs a crashed audit; the third crash of one version stops that."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    from flows.registry import MAX_CRASHES, audit_registered_version, refuse_after_repeated_crashes
    from interp_audit.errors import AuditError

    with get_client(sync_client=True) as client:
        flow_id = client.create_flow(audit_registered_version)
        deployment_id = client.create_deployment(flow_id=flow_id, name="crash-count")
        for version in ["4"] * MAX_CRASHES + ["5"]:
            run = client.create_flow_run_from_deployment(deployment_id, parameters={"version": version})
            client.set_flow_run_state(run.id, Crashed(), force=True)
    with pytest.raises(AuditError, match=f"gray-net v4 crashed {MAX_CRASHES} times"):
        refuse_after_repeated_crashes(str(deployment_id), "gray-net", "4")
    refuse_after_repeated_crashes(str(deployment_id), "gray-net", "5")  # one crash: re-run


def test_one_watcher_run_looks_through_its_window_and_fails_only_if_its_last_look_did(tmp_path, registry_uri):
    """The fleet's watcher: one process per window, a look every few seconds. A version registered in the middle
    of the window is announced by that same run; a spec that cannot be read fails every look, then the run."""
    import threading

    from flows.registry import watch_registries
    from interp_audit.errors import SpecError

    register_gray(registry_uri)
    spec = str(write_spec(tmp_path, registry_uri))
    later = threading.Timer(4, register_gray, args=(registry_uri,), kwargs={"seed": 1})
    later.start()
    started = time.monotonic()
    announced = watch_registries([spec], look_every_seconds=1, window_seconds=9)
    later.join()
    assert announced == {spec: ["2"]}  # version 1 was there before the first look (the watermark)
    assert 7 <= time.monotonic() - started < 20
    with pytest.raises(SpecError, match="missing.yaml"):
        watch_registries([str(tmp_path / "missing.yaml")], look_every_seconds=1, window_seconds=2)


def _refused_connection() -> Exception:
    """The error a Prefect client raises when its API is not listening (a server restarting)."""
    from conftest import free_port
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api"}):
        try:
            with get_client(sync_client=True) as client:
                client.read_flow_runs(limit=1)
        except Exception as exc:
            return exc
    raise AssertionError("a closed port answered")


def _server_error() -> Exception:
    """The error a Prefect client raises when its API answers 500 (its database restarting), from a real server."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    class Failing(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST  # noqa: N815

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{server.server_port}/api"}):
            with get_client(sync_client=True) as client:
                client.read_flow_runs(limit=1)
    except Exception as exc:
        return exc
    finally:
        server.shutdown()
    raise AssertionError("a failing server answered")


def test_an_api_that_does_not_answer_is_told_from_a_fault_of_the_audit():
    from flows.registry import api_unavailable
    from interp_audit.errors import AuditError, SpecError

    refused, failing = _refused_connection(), _server_error()
    assert api_unavailable(refused) and api_unavailable(failing)
    try:  # an audit's own error raised while the API was away is still the audit's
        try:
            raise refused
        except Exception:
            raise SpecError("ops.lime.samples: bad") from None
    except SpecError as exc:
        assert not api_unavailable(exc)
    try:  # and an error that came of the API's absence is the API's
        try:
            raise failing
        except Exception as cause:
            raise RuntimeError("the task's state could not be set") from cause
    except RuntimeError as exc:
        assert api_unavailable(exc)
    assert not api_unavailable(AuditError(["contracts: a column is missing"]))


def test_a_version_audit_whose_api_did_not_answer_starts_again_and_publishes_once(tmp_path, registry_uri, monkeypatch):
    """The Prefect API failing under the per-version flow (its database restarted as the audit took its key's slot:
    `make test-faults` has the real fault) fails that try only: the flow waits, tries again and publishes once.
    The failure is injected by failing the flow's first try with the error a real refused connection raised."""
    import flows.registry as registry

    version = register_gray(registry_uri)
    spec = write_spec(tmp_path, registry_uri)
    refused, tries = _refused_connection(), []
    audit_once = registry._audit_unless_published

    def flaky(*args, **kwargs):
        tries.append(1)
        if len(tries) == 1:
            raise refused
        return audit_once(*args, **kwargs)

    monkeypatch.setattr(registry, "_audit_unless_published", flaky)
    monkeypatch.setattr(registry, "API_RETRY_WAITS", (0.1,))
    summary = registry.audit_registered_version(str(spec), version)
    assert len(tries) == 2 and summary["status"] == "passed"
    assert len(report.list_runs(tmp_path / "reports", "gray-net", version)) == 1

    def unreachable(*args, **kwargs):
        tries.append(1)
        raise refused

    tries.clear()
    monkeypatch.setattr(registry, "_audit_unless_published", unreachable)
    with pytest.raises(type(refused)):  # past its tries, the error is the run's
        registry.audit_registered_version(str(spec), version)
    assert len(tries) == 2
