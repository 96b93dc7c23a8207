"""`interp-audit fleet`: a PostgreSQL run as the `postgres` user, a Prefect server on it, a process work pool and a
worker, started here by the command and stopped by `fleet down`, which the tests check by the recorded pids."""

import asyncio
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import free_port, save_state_dict

from flows.fleet import PREFECT_YAML
from interp_audit import report

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def fleet_command(*args, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", "fleet", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def pids_of(state: Path) -> dict[str, int]:
    return {p["name"]: p["pid"] for p in json.loads((state / "fleet.json").read_text())["processes"]}


@pytest.fixture(scope="module")
def fleet():
    """A fleet with one worker, in a folder the `postgres` user can enter (pytest's own temp folders are 0700). The
    registry deployments/prefect.yaml's watcher looks at is an empty one of its own (MLFLOW_TRACKING_URI, which the
    workers inherit), not one in the checkout's ./reports."""
    if not list(Path("/usr/lib/postgresql").glob("*/bin/postgres")) and not shutil.which("postgres"):
        pytest.fail("PostgreSQL is not installed: `make test` installs it (apt-get install postgresql)")
    state = Path(tempfile.mkdtemp(prefix="interp-audit-fleet-"))
    state.chmod(0o711)
    port, postgres_port = free_port(), free_port()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{state / 'registry.db'}")
        started = fleet_command(
            "up", "--state", state, "--workers", 1, "--port", port, "--postgres-port", postgres_port
        )
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield {"state": state, "api": f"http://127.0.0.1:{port}/api", "postgres_port": postgres_port, "up": started}
    finally:
        fleet_command("down", "--state", state)
        shutil.rmtree(state, ignore_errors=True)


def test_up_prints_each_part_with_its_pid_address_and_log(fleet):
    output = " ".join((fleet["up"].stdout + fleet["up"].stderr).split())
    pids = pids_of(fleet["state"])
    assert set(pids) == {"postgres", "prefect-server", "interp-audit-worker-1"}
    for name, pid in pids.items():
        assert name in output and str(pid) in output and alive(pid)
    assert fleet["api"] in output and f"127.0.0.1:{fleet['postgres_port']}" in output
    postgres = Path(f"/proc/{pids['postgres']}/status").read_text()
    postgres_uid = int(next(line for line in postgres.splitlines() if line.startswith("Uid:")).split()[1])
    assert postgres_uid != 0  # PostgreSQL refuses root: it runs as the postgres user


def test_an_audit_runs_through_the_pool_on_postgres_and_logs_to_its_run(fleet, gray_spec, tmp_path):
    """deployments/prefect.yaml's audit, run by the pool's worker: a user's model whose random-init baseline warns
    (a module without reset_parameters); the run's log (the UI's Logs tab) has our progress lines and the task's
    warning, and the run is a row of the fleet's PostgreSQL."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from user_models import scaled_gray_net

    weights = save_state_dict(scaled_gray_net(), tmp_path / "scaled.pt")
    spec = gray_spec(
        **{
            "model.factory": f"{ROOT / 'tests/assets/user_models.py'}:scaled_gray_net",
            "model.weights": str(weights),
            "model.layers": ["body.conv1"],
            "ops": {"dissection": {"concepts": "builtin:concepts?n=12", "baseline": "random_init"}},
        }
    )
    store = tmp_path / "reports"
    with temporary_settings({PREFECT_API_URL: fleet["api"]}):
        run = run_deployment(
            "interp-audit/shapes-demo", parameters={"spec_path": str(spec), "store": str(store)}, timeout=600
        )
        assert run.state.is_completed(), run.state
        with get_client(sync_client=True) as client:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
    flow_lines = [log.message for log in logs if log.task_run_id is None and log.level == logging.INFO]
    for line in ("audit gray-audit of gray-net v7 on cpu", "ONNX bundle ready", "dissection:", "contracts:"):
        assert any(message.startswith(line) for message in flow_lines), (line, flow_lines)
    assert not any("[/" in message or "[dim]" in message for message in flow_lines)  # plain text, no markup
    warned = [log for log in logs if log.level == logging.WARNING and "have no reset_parameters()" in log.message]
    assert warned and all(log.task_run_id is not None for log in warned), [log.message for log in logs]
    (run_id,) = report.list_runs(store).run_id
    assert run_id == str(run.id)

    async def stored_runs() -> int:  # the run is a row of the fleet's PostgreSQL
        import asyncpg

        password = (fleet["state"] / "postgres.password").read_text().strip()
        connection = await asyncpg.connect(
            f"postgresql://interp_audit:{password}@127.0.0.1:{fleet['postgres_port']}/prefect"
        )
        try:
            return await connection.fetchval("SELECT count(*) FROM flow_run WHERE id = $1", run.id)
        finally:
            await connection.close()

    assert asyncio.run(stored_runs()) == 1


def yaml_entries() -> dict[str, dict]:
    return {entry["name"]: entry for entry in yaml.safe_load((ROOT / PREFECT_YAML).read_text())["deployments"]}


def test_the_yaml_declares_the_triggers_that_the_python_path_builds():
    """`fleet up --watch` and `interp-audit watch` deploy a spec's audit from Python; deployments/prefect.yaml
    declares the demo spec's: both trigger alike."""
    from prefect.cli.deploy._triggers import DeploymentTriggerAdapter  # what `prefect deploy` reads them with

    from flows.registry import audit_triggers

    declared = yaml_entries()["shapes-registry-demo"]["triggers"]
    assert [DeploymentTriggerAdapter.validate_python(trigger) for trigger in declared] == audit_triggers(
        "shapes-registry-demo"
    )


def test_the_yaml_registry_watcher_and_its_audit_are_deployed_and_an_announcement_runs_the_audit(fleet):
    """`fleet up` deploys deployments/prefect.yaml with `prefect deploy --all`: the watcher has its schedule, queue
    and one-run limit, and the audit its two triggers as automations. An announcement of a version, as the watcher
    makes it, runs that audit on the pool's worker with the deployment's spec (a version of a model this
    registry does not have: the run fails at once, naming it)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.events import Event
    from prefect.events.clients import PrefectEventsClient
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.registry import audit_triggers, version_event
    from interp_audit.spec import load_spec

    with temporary_settings({PREFECT_API_URL: fleet["api"]}), get_client(sync_client=True) as client:
        watcher = client.read_deployment_by_name("interp-audit-watch-all/registry-watch")
        (schedule,) = watcher.schedules
        assert schedule.schedule.interval.total_seconds() == 300 and schedule.active
        assert watcher.work_queue_name == "registry-watch" and watcher.global_concurrency_limit.limit == 1
        assert watcher.concurrency_options.collision_strategy == "CANCEL_NEW"
        assert watcher.parameters["spec_paths"] == ["deployments/specs/shapes-registry-demo.yaml"]

        audit = client.read_deployment_by_name("interp-audit-registry-version/shapes-registry-demo")
        automations = client.read_resource_related_automations(f"prefect.deployment.{audit.id}")
        by_name = {automation.name: automation for automation in automations}
        for trigger in audit_triggers("shapes-registry-demo"):
            automation = by_name.pop(trigger.name)
            assert automation.trigger.expect == trigger.expect and automation.trigger.match == trigger.match
            assert automation.trigger.match_related == trigger.match_related
            (action,) = automation.actions
            assert action.deployment_id == audit.id and action.parameters == trigger.parameters
        assert not by_name, by_name

        spec = load_spec(ROOT / audit.parameters["spec_path"])

        async def announce() -> None:
            async with PrefectEventsClient(fleet["api"]) as events:
                await events.emit(Event(**version_event(spec, "7")))

        asyncio.run(announce())
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[audit.id])))
            if runs and runs[0].state.is_final():
                break
            time.sleep(2)
    (run,) = runs
    assert run.parameters == audit.parameters | {"version": "7"}
    assert run.state.is_failed() and "no registered model 'shapes-cnn'" in run.state.message, run.state


def test_a_pool_name_taken_by_another_kind_of_pool_is_refused_and_nothing_stays_up(fleet):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: fleet["api"]}), get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="gpu-cluster", type="kubernetes"))
    password = (fleet["state"] / "postgres.password").read_text().strip()
    database = f"postgresql+asyncpg://interp_audit:{password}@127.0.0.1:{fleet['postgres_port']}/prefect"
    state, port = Path(tempfile.mkdtemp(prefix="interp-audit-fleet-")), free_port()
    try:
        refused = fleet_command(
            "up", "--state", state, "--pool", "gpu-cluster", "--port", port, "--database-url", database
        )
        output = " ".join((refused.stdout + refused.stderr).split())
        assert refused.returncode == 2 and "work pool 'gpu-cluster'" in output and "'kubernetes'" in output, output
        assert "prefect-server" in output and not (state / "fleet.json").exists()  # started, then stopped
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # the server it started is gone
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_a_password_postgres_refuses_is_named_and_nothing_starts(fleet, tmp_path):
    wrong = f"postgresql+asyncpg://interp_audit:wrong@127.0.0.1:{fleet['postgres_port']}/prefect"
    refused = fleet_command("up", "--state", tmp_path / "fleet", "--port", free_port(), "--database-url", wrong)
    output = " ".join((refused.stdout + refused.stderr).split())
    assert refused.returncode == 2, output
    assert f"PostgreSQL at 127.0.0.1:{fleet['postgres_port']} refused the password for user interp_audit" in output
    assert not (tmp_path / "fleet" / "fleet.json").exists()


def test_a_port_in_use_is_named_before_anything_starts(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused = fleet_command("up", "--state", tmp_path / "fleet", "--port", port, "--postgres-port", free_port())
    output = " ".join((refused.stdout + refused.stderr).split())
    assert refused.returncode == 2 and f"port {port} for the Prefect server is in use" in output, output
    assert not (tmp_path / "fleet").exists()


def test_down_stops_exactly_what_up_started(fleet):
    pids = pids_of(fleet["state"])
    stopped = fleet_command("down", "--state", fleet["state"])
    assert stopped.returncode == 0, stopped.stderr
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [name for name, pid in pids.items() if alive(pid)]
    assert not (fleet["state"] / "fleet.json").exists()
    assert "no fleet runs" in fleet_command("down", "--state", fleet["state"]).stderr
