"""Faults of a fleet at work (issue 17): `interp-audit fleet up` with two workers watching a registry model, and one
fault per test. Each ends with exactly one published run per (model, version, spec) and no partial run visible.

Run with `make test-faults` (a few minutes each: crash detection waits for missing heartbeats)."""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import ASSETS, free_port
from test_fleet import alive, fleet_command, pids_of

from interp_audit import report
from interp_audit.store import ReportStore

pytestmark = [pytest.mark.slow, pytest.mark.faults]
MODEL = "faults-net"
SPEC_NAME = "faults-audit"
GRAY_FACTORY = f"{ASSETS / 'user_models.py'}:gray_net"
RECOVERY_SECONDS = 420


class MlflowServer:
    """An MLflow tracking server on 127.0.0.1 (a registry as teams run it), which a test can stop and start."""

    def __init__(self, folder: Path):
        self.folder, self.port = folder, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--workers", "1"]
        command += ["--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}"]
        command += ["--artifacts-destination", str(self.folder / "artifacts")]
        log = open(self.folder / "mlflow.log", "ab")  # noqa: SIM115 - the server writes it
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.uri}/health", timeout=2).status_code == 200:
                    return
            assert self.process.poll() is None, (self.folder / "mlflow.log").read_text()[-3000:]
            time.sleep(0.5)
        raise AssertionError("the MLflow server did not answer within 120 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None


@pytest.fixture(scope="module")
def fleet():
    """Two workers; the watcher looks at an MLflow tracking server's registry every 10 s for one spec's model."""
    state = Path(tempfile.mkdtemp(prefix="interp-audit-faults-"))
    state.chmod(0o711)  # PostgreSQL runs as the postgres user: it must enter the folder
    mlflow = MlflowServer(state)
    mlflow.start()
    registry = mlflow.uri
    store = state / "reports"
    spec = {
        "name": SPEC_NAME,
        "seed": 0,
        "model": {
            "source": "mlflow",
            "name": MODEL,
            "version": "latest",
            "tracking_uri": registry,
            "backfill": True,
            "input": {"shape": [1, 28, 28], "mean": [0.5], "std": [0.5]},
            "layers": ["body.conv1", "body.act2"],
        },
        "data": "builtin:shapes?split=val&n=12",
        # long enough to be killed half-way: six LIME tasks of a few seconds each, after the export
        "ops": {
            "lime": {
                "samples": 6,
                "num_samples": 1500,
                "samples_per_task": 1,
                "hide": 0.0,
                "segmentation": {"method": "slic", "n_segments": 30},
            },
            "dissection": {"concepts": "builtin:concepts?n=60", "layers": ["body.act2"]},
        },
        "contracts": {"onnx.max_abs_diff": 1.0e-4},
        "report": {"store": str(store)},
    }
    spec_path = state / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    port = free_port()
    started = fleet_command(
        "up", "--state", state / "fleet", "--workers", 2, "--port", port, "--postgres-port", free_port(),
        "--watch", spec_path, "--store", store, "--interval", 10,
    )  # fmt: skip
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield {"state": state, "api": f"http://127.0.0.1:{port}/api", "registry": registry, "store": store,
               "mlflow": mlflow}  # fmt: skip
    finally:
        fleet_command("down", "--state", state / "fleet")
        mlflow.stop()
        shutil.rmtree(state, ignore_errors=True)


def register(registry: str, seed: int) -> str:
    import torch
    from user_models import GrayNet

    from interp_audit.registry import log_model

    torch.manual_seed(seed)
    return log_model(GrayNet(), MODEL, GRAY_FACTORY, tracking_uri=registry)


def audit_runs(api: str, version: str) -> list:
    """The deployment's flow runs for ``version``, oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[SPEC_NAME])),
            sort=FlowRunSort.START_TIME_ASC,
        )
    return [run for run in runs if str(run.parameters.get("version")) == version]


def audit_tasks(api: str, parent_run_id) -> list:
    """The task runs of the audit subflow that the flow run ``parent_run_id`` started."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        subflows = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_run_id]))
        )
        if not subflows:
            return []
        return client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id for run in subflows]))
        )


def wait_for(what: str, check, seconds: float = RECOVERY_SECONDS, every: float = 2.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"not within {seconds:.0f} s: {what}")


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_a_worker_killed_mid_audit_is_detected_crashed_and_re_run_from_the_cache(fleet):
    """The machine under a worker dies: the worker and the audit's process are SIGKILLed after some of the audit's
    tasks finished. The fleet's automation marks the silent run crashed (its heartbeats stopped), the
    deployment's trigger runs the version again on the other worker, and that run takes the finished tasks from
    the result cache: one published run, nothing partial, the verdict written back."""
    api = fleet["api"]
    version = register(fleet["registry"], seed=1)
    first = wait_for("the audit running with tasks finished", lambda: _running_with_tasks(api, version), every=0.5)
    flow_pid = int(first.infrastructure_pid.rsplit(":", 1)[-1])  # "PID", or "HOST:PID"
    worker_pid = parent_pid(flow_pid)
    for pid in (worker_pid, flow_pid):
        os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for("the killed processes gone", lambda: not alive(flow_pid) and not alive(worker_pid), 10, 0.2)
    assert report.list_runs(fleet["store"]).empty  # killed before its publish

    crashed = wait_for("the silent run marked crashed", lambda: _state_of(api, version, first.id, "CRASHED"))
    detected = time.monotonic() - killed_at
    rerun = wait_for("a re-run completed", lambda: _completed_rerun(api, version, first.id))
    recovered = time.monotonic() - killed_at
    print(f"crash detected after {detected:.0f} s, re-run completed {recovered:.0f} s after the kill")

    assert "heartbeat" in crashed.state.message
    runs = report.list_runs(fleet["store"], MODEL, version)
    assert len(runs) == 1, runs
    assert ReportStore.open(fleet["store"]).check().intact
    cached = [task for task in audit_tasks(api, rerun.id) if task.state.name == "Cached"]
    assert cached, "the re-run recomputed every task"
    assert len([run for run in audit_runs(api, version) if run.state.is_completed()]) == 1


def _running_with_tasks(api: str, version: str):
    for run in audit_runs(api, version):
        if (
            run.state.is_running()
            and run.infrastructure_pid
            and sum(t.state.is_completed() for t in audit_tasks(api, run.id)) >= 3
        ):
            return run
    return None


def _state_of(api: str, version: str, run_id, state_type: str):
    return next((r for r in audit_runs(api, version) if r.id == run_id and r.state.type.value == state_type), None)


def _completed_rerun(api: str, version: str, crashed_id):
    return next((r for r in audit_runs(api, version) if r.id != crashed_id and r.state.is_completed()), None)


def test_the_prefect_server_restarted_while_audits_run_and_wait(fleet):
    """Three versions at once on a pool of two: two audits run, one waits in the queue, when the Prefect server is
    restarted (on the same PostgreSQL). The running audits' clients retry while it is away; all three publish once."""
    _all_workers_online(fleet)
    versions = [register(fleet["registry"], seed) for seed in (21, 22, 23)]
    wait_for("two audits running", lambda: len(_running(fleet["api"], versions)) >= 2, every=0.5)
    restarted = fleet_command("restart", "prefect-server", "--state", fleet["state"] / "fleet")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    _each_published_once(fleet, versions)


def test_postgres_restarted_while_audits_run(fleet):
    versions = [register(fleet["registry"], seed) for seed in (31, 32)]
    wait_for("two audits running", lambda: len(_running(fleet["api"], versions)) >= 2, every=0.5)
    restarted = fleet_command("restart", "postgres", "--state", fleet["state"] / "fleet")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    _each_published_once(fleet, versions)


def _all_workers_online(fleet) -> None:
    """A test before may have killed a worker: start it again, as an operator would (`fleet restart`)."""
    state = fleet["state"] / "fleet"
    for name, pid in pids_of(state).items():
        if name.startswith("interp-audit-worker") and not alive(pid):
            restarted = fleet_command("restart", name, "--state", state)
            assert restarted.returncode == 0, restarted.stdout + restarted.stderr


def _running(api: str, versions: list[str]) -> list:
    return [run for version in versions for run in audit_runs(api, version) if run.state.is_running()]


def _each_published_once(fleet, versions: list[str]) -> None:
    def published() -> bool:
        runs = report.list_runs(fleet["store"], MODEL)
        return set(versions) <= set(runs.model_version)

    wait_for(f"versions {versions} published", published)
    runs = report.list_runs(fleet["store"], MODEL)
    for version in versions:
        assert (runs.model_version == version).sum() == 1, runs
    assert ReportStore.open(fleet["store"]).check().intact


def test_the_registry_unreachable_for_30_seconds_loses_no_version(fleet):
    """Two versions are registered and the MLflow server stops at once, before the watcher saw them; it answers
    again 30 s later. The watcher's looks fail meanwhile (its runs fail, the next interval tries again); then both
    versions are audited once and tagged."""
    versions = [register(fleet["registry"], seed) for seed in (41, 42)]
    fleet["mlflow"].stop()
    time.sleep(30)
    fleet["mlflow"].start()
    _each_published_once(fleet, versions)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=fleet["registry"], registry_uri=fleet["registry"])
    wait_for("the verdicts written back", lambda: all(
        "interp_audit.status" in client.get_model_version(MODEL, v).tags for v in versions
    ))  # fmt: skip
