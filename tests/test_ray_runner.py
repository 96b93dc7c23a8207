"""The audit's tasks on Ray (issue 16): `interp-audit run --runner ray` on a real local two-node Ray cluster.

Ray's resources are logical: the second node declares a GPU this machine does not have, and that is all Ray's
scheduler needs to place the GPU-share tasks there (they then compute on the CPU, as `device: auto` does here).
The tests start the cluster and stop it, and check that a run without --ray-address stops the Ray it started.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ray
import yaml
from conftest import free_port, new_bucket, s3_keys, store_is_empty
from prefect.exceptions import ParameterTypeError
from prefect.settings import PREFECT_API_URL, PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings
from typer.testing import CliRunner

from flows.audit import audit_on_runner
from flows.cli import app
from flows.runners import Runner
from interp_audit import report
from interp_audit.store import ReportStore
from interp_audit.store_manifest import BLOBS, MANIFESTS, RESULTS, STAGING

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]
runner = CliRunner()

ROOT = Path(__file__).resolve().parent.parent
OBJECT_STORE_BYTES = 80 * 1024**2  # Ray's minimum; the demo's arrays are a few MB
GPU_TASKS = {"predict", "onnx-parity", "lime", "actmax-render", "actmax-exemplars", "dissection"}
IGNORED_COLUMNS = {"run_id", "started_at", "finished_at"}  # each run's own; everything else must agree
ACTMAX_RTOL = 2e-3  # test_actmax_ops: float32 renders differ by up to 1.6e-3 relative with how torch rounds


def cli(*args, env=None):
    result = runner.invoke(app, [str(a) for a in args], env=env)
    return result.exit_code, " ".join(result.output.split())


def small_spec(tmp_path: Path, weights: Path, name: str) -> Path:
    """The demo spec made small, with more than one task per method (2 LIME batches, 2 render batches, 2
    dissection layers and their random-init baseline) so that tasks could run side by side."""
    spec = yaml.safe_load((ROOT / "deployments/specs/shapes-demo.yaml").read_text())
    spec["model"]["weights"] = str(weights)
    spec["data"] = "builtin:shapes?split=val&n=8"
    spec["ops"]["lime"].update(samples=4, samples_per_task=2, num_samples=200, stability_seeds=1, heldout_samples=50)
    spec["ops"]["activation_max"].update(units="first:4", batch_units=2, steps=8, exemplars=2)
    spec["ops"]["dissection"]["concepts"] = "builtin:concepts?n=40"
    spec["contracts"] = {"onnx.max_abs_diff": 1.0e-4}
    spec["report"]["store"] = str(tmp_path / f"{name}-reports")
    spec.pop("schedule")
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def cluster(s3_endpoint):
    """A head node with one CPU and no GPU, and a node with two CPUs and one (declared) GPU. Its dashboard (Ray's
    state API, which the placement test reads) takes a free port: another Ray on this machine may hold 8265.
    Started after the S3 server, its workers hold that server's credentials in their environment, as a real
    cluster's nodes hold theirs (the flow never ships credentials to workers)."""
    from ray.cluster_utils import Cluster

    started = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "num_gpus": 0,
            "object_store_memory": OBJECT_STORE_BYTES,
            "dashboard_port": free_port(),
        },
    )
    try:
        gpu_node = started.add_node(num_cpus=2, num_gpus=1, object_store_memory=OBJECT_STORE_BYTES)
        started.wait_for_nodes()
        yield started, gpu_node.node_id
    finally:
        started.shutdown()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, trained, cluster, s3_endpoint):
    """The same spec audited on the thread runner into a local store (its task results in ``thread-results``) and
    on the cluster into a store on S3 (its task results and blobs beside the report): neither reuses the other's
    cache, and both compute every table. Returns the folder, both stores and the S3 bucket."""
    root = tmp_path_factory.mktemp("ray-runner")
    spec = small_spec(root, trained["honest"].weights_path, "audit")
    bucket = new_bucket(s3_endpoint)
    stores = {"thread": root / "thread-reports", "ray": bucket[2]}
    options = {"thread": [], "ray": ["--runner", "ray", "--ray-address", cluster[0].address]}
    for name, store in stores.items():
        with temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: root / f"{name}-results"}):
            code, output = cli("run", spec, "--store", store, *options[name])
        assert code == 0, output
    return root, stores, bucket


def task_run_states(run_id: str) -> dict[str, set[str]]:
    """The state names of a flow run's task runs in the Prefect API, by task name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    states: dict[str, set[str]] = {}
    for task_run in task_runs:
        states.setdefault(task_run.name.rsplit("-", 1)[0], set()).add(task_run.state.name)
    return states


def run_tables(store, run_id: str | None = None) -> dict[str, pd.DataFrame]:
    """Every table of a run (of the store's one run when ``run_id`` is None), local or on S3."""
    if run_id is None:
        (run_id,) = report.list_runs(store).run_id
    names = ReportStore.open(store).tables_with_data()
    return {name: report.load_table(store, name, run_id=run_id) for name in names}


def assert_same_tables(got: dict[str, pd.DataFrame], want: dict[str, pd.DataFrame]) -> None:
    """The tables of two runs of one spec agree: bit for bit, but act-max's renders within their tolerance."""
    assert set(got) == set(want) and {"lime_attributions", "dissection_units", "actmax_units"} <= set(want)
    for name, expected in want.items():
        actual = got[name]
        columns = [c for c in expected.columns if c not in IGNORED_COLUMNS]
        expected, actual = expected[columns].reset_index(drop=True), actual[columns].reset_index(drop=True)
        if name == "actmax_units":  # renders: their numbers within act-max's stated tolerance, the rest exact
            numeric = ["final_activation", "dataset_max", "ratio", "robustness"]
            np.testing.assert_allclose(actual[numeric].to_numpy(float), expected[numeric].to_numpy(float), ACTMAX_RTOL)
            np.testing.assert_allclose(np.stack(actual.curve), np.stack(expected.curve), ACTMAX_RTOL)
            columns = [c for c in columns if c not in [*numeric, "curve", "render_png"]]
            expected, actual = expected[columns], actual[columns]
        pd.testing.assert_frame_equal(actual, expected, check_exact=True, obj=name)


def test_the_tables_on_ray_equal_the_thread_runners(runs):
    root, stores, (client, bucket, _) = runs
    assert_same_tables(run_tables(stores["ray"]), run_tables(stores["thread"]))
    # the Ray workers reported their task runs to the flow's Prefect API (none of their own) and kept their
    # results beside the report, where every worker that reaches the store reads them
    (run_id,) = report.list_runs(stores["ray"]).run_id
    states = task_run_states(run_id)
    assert GPU_TASKS <= set(states) and all(names == {"Completed"} for names in states.values()), states
    assert s3_keys(client, bucket, f"reports/{RESULTS}/")
    # the big inputs went to the Ray workers as refs to blobs written once beside the report, not in each submission
    assert len(s3_keys(client, bucket, f"reports/{BLOBS}/")) >= 2  # the ONNX bytes and the samples, at least
    assert not (stores["thread"] / BLOBS).exists()


def test_gpu_tasks_ran_on_the_gpu_node_one_at_a_time(runs, cluster):
    address, gpu_node_id = cluster[0].address, cluster[1]
    from ray.util.state import list_tasks

    ray.init(address=address, logging_level="WARNING")
    try:
        tasks = list_tasks(detail=True, limit=10_000, raise_on_missing_output=False)
    finally:
        ray.shutdown()
    finished = [task for task in tasks if task.state == "FINISHED"]
    gpu_tasks = [task for task in finished if task.name in GPU_TASKS]
    assert {task.name for task in gpu_tasks} == GPU_TASKS
    assert {task.node_id for task in gpu_tasks} == {gpu_node_id}
    assert "random-init-baseline" in {task.name for task in finished}  # the CPU task ran on Ray too
    # never more GPU tasks at once than the cluster's one declared GPU
    edges = sorted(
        [(task.start_time_ms, 1) for task in gpu_tasks] + [(task.end_time_ms, -1) for task in gpu_tasks],
        key=lambda edge: (edge[0], edge[1]),
    )
    running = np.cumsum([step for _, step in edges])
    assert running.max() == 1, edges


def test_an_unknown_runner_is_refused(tmp_path, trained):
    spec = small_spec(tmp_path, trained["honest"].weights_path, "unknown")
    code, output = cli("run", spec, "--runner", "dask")
    assert code == 2 and "'thread'" in output and "'ray'" in output, output
    code, output = cli("run", spec, env={"INTERP_AUDIT_RUNNER": "kubernetes"})
    assert code == 2 and "INTERP_AUDIT_RUNNER" in output, output
    assert store_is_empty(tmp_path / "unknown-reports")
    # a deployment's parameters are checked the same way (deployments/prefect.yaml)
    with pytest.raises(ParameterTypeError, match="runner"):
        audit_on_runner.validate_parameters({"spec_path": str(spec), "runner": "dask"})
    assert audit_on_runner.validate_parameters({"spec_path": str(spec), "runner": "ray"})["runner"] is Runner.ray


def test_an_address_nobody_answers_fails_fast_and_writes_nothing(tmp_path, trained):
    address = f"127.0.0.1:{free_port()}"
    spec = small_spec(tmp_path, trained["honest"].weights_path, "unreachable")
    started = time.monotonic()
    code, output = cli("run", spec, "--runner", "ray", "--ray-address", address)
    assert code == 3 and address in output, output
    assert time.monotonic() - started < 60
    assert store_is_empty(tmp_path / "unreachable-reports")


def ray_processes_under(pid: int) -> set[int]:
    """The raylet and GCS server processes descended from ``pid``."""
    parents, names = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            names[int(entry.name)] = stat[stat.index("(") + 1 : stat.rindex(")")]
            parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])

    def descends(child: int) -> bool:
        while child > 1:
            child = parents.get(child, 0)
            if child == pid:
                return True
        return False

    return {p for p, name in names.items() if name in ("raylet", "gcs_server") and descends(p)}


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False


def test_a_run_without_address_starts_its_own_ray_and_stops_it(trained, runs):
    """Run beside the thread run's spec (the spec's folder is part of the model's key), its store holding a copy of
    the thread run's task results: a Ray run finds them under the same cache keys."""
    root, stores, _ = runs
    spec = small_spec(root, trained["honest"].weights_path, "local")
    shutil.copytree(root / "thread-results", root / "local-reports" / "_results")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {
        "PREFECT_API_URL": PREFECT_API_URL.value(),
    }
    command = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", str(spec), "--runner", "ray", "--only", "lime"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    seen: set[int] = set()
    while command.poll() is None:
        seen |= ray_processes_under(command.pid)
        time.sleep(0.2)
    output = command.stdout.read().decode(errors="replace")
    assert command.returncode == 0, output
    assert seen, "no raylet or GCS server was started under the command"
    assert not [pid for pid in seen if alive(pid)], output
    (run_id,) = report.list_runs(root / "local-reports").run_id
    states = task_run_states(run_id)
    assert all(states[name] == {"Cached"} for name in ("predict", "onnx-parity", "lime")), states


@pytest.mark.faults  # minutes on 2 cores: `make test-faults`, which CI runs after `make test`
def test_a_worker_killed_mid_task_is_retried_and_one_run_is_published(runs, cluster, trained):
    """SIGKILL to the Ray worker running a LIME task: Ray runs the task again, the audit passes and publishes one
    run whose LIME tables equal the same spec's on the thread runner."""
    root = runs[0]
    spec = small_spec(root, trained["honest"].weights_path, "killed")
    content = yaml.safe_load(spec.read_text())
    content["ops"]["lime"]["num_samples"] = 2000  # tasks of a few seconds, long enough to be caught running
    spec.write_text(yaml.safe_dump(content, sort_keys=False))
    env = os.environ | {"PREFECT_API_URL": PREFECT_API_URL.value()}
    command = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", str(spec), "--runner", "ray", "--ray-address", cluster[0].address],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    from ray.util.state import list_tasks

    ray.init(address=cluster[0].address, logging_level="WARNING")
    try:
        killed = None
        while killed is None and command.poll() is None:
            running = list_tasks(filters=[("name", "=", "lime"), ("state", "=", "RUNNING")], detail=True)
            if running and running[0].worker_pid:
                killed = running[0]
                os.kill(killed.worker_pid, signal.SIGKILL)
            time.sleep(0.1)
        output = command.communicate(timeout=600)[0].decode(errors="replace")
        attempts = list_tasks(filters=[("task_id", "=", killed.task_id)], detail=True) if killed else []
    finally:
        ray.shutdown()
    assert killed is not None, "no LIME task was caught running: " + output
    assert command.returncode == 0, output
    assert {attempt.attempt_number for attempt in attempts} >= {0, 1}, attempts  # Ray ran the killed task again
    (run_id,) = report.list_runs(root / "killed-reports").run_id

    code, output = cli("run", spec, "--store", root / "killed-thread-reports", "--only", "lime")
    assert code == 0, output
    for table in ("lime_explanations", "lime_attributions"):
        got = report.load_table(root / "killed-reports", table, run_id=run_id).drop(columns=["run_id"])
        want = report.load_table(root / "killed-thread-reports", table).drop(columns=["run_id"])
        assert len(got) == len(want) > 0, table
        pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True), check_exact=True)


@pytest.mark.faults  # minutes on 2 cores: `make test-faults`, which CI runs after `make test`
def test_an_audit_killed_midway_leaves_nothing_visible_on_s3_and_its_rerun_reuses_what_finished(
    runs, cluster, s3_endpoint
):
    """SIGKILL to the flow's process once task results reach the S3 store: no run, table, manifest or staged file
    is visible. The same command again, as from another machine, reuses the tasks that finished (their results
    are on the store) and publishes one run whose tables equal the uninterrupted run's on the same spec."""
    root, stores, _ = runs
    client, bucket, uri = new_bucket(s3_endpoint)
    command = [sys.executable, "-m", "flows.cli", "run", str(root / "audit.yaml"), "--store", uri]
    command += ["--runner", "ray", "--ray-address", cluster[0].address]
    env = os.environ | {"PREFECT_API_URL": PREFECT_API_URL.value()}
    killed = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT)
    finished: list[str] = []
    while not finished and killed.poll() is None:
        finished = s3_keys(client, bucket, f"reports/{RESULTS}/")
        time.sleep(0.1)
    killed.kill()
    output = killed.communicate(timeout=60)[0].decode(errors="replace")
    assert killed.returncode == -signal.SIGKILL and finished, output

    assert report.list_runs(uri).empty and ReportStore.open(uri).tables_with_data() == []
    assert s3_keys(client, bucket, f"reports/{MANIFESTS}/") == []
    assert [key for key in s3_keys(client, bucket, f"reports/{STAGING}/") if not key.endswith("/")] == []

    code, output = cli(*command[3:])
    assert code == 0, output
    (run_id,) = report.list_runs(uri).run_id
    cached = {name for name, states in task_run_states(run_id).items() if states == {"Cached"}}
    assert cached, "no task of the killed run was reused"
    assert_same_tables(run_tables(uri), run_tables(stores["ray"]))
    assert ReportStore.open(uri).check().intact
