"""The fleet under load (issue 17): many model versions registered at once, each audited exactly once.

`interp-audit fleet up` on this machine (PostgreSQL, a Prefect server, the `interp-audit` process pool with two
workers, at most two audits at once), with the registry watcher looking for every spec (a SQLite MLflow registry, the demo
CNN's architecture with distinct seeded weights per version, a spec sized so that one audit takes 20-40 s here):

  alone    one version registered, audited with nothing else running: ``seconds_per_audit_alone``, from the
           registration to the published run (the watcher's look at the registry included, as in every round);
  round 1  20 versions of one model registered within about a second;
  round 2  5 versions each of 4 models, registered the same way;
  specs    two specs watching one model, one version: both audit it at the same moment, both publish.

Per round: ``versions``, ``published`` (versions with a published run), ``duplicates`` (runs beyond one per version),
``lost``, ``tagged`` (versions the verdict was written back to), ``max_concurrent_audits`` (from the audit flow
runs' start and end times in the Prefect API), ``wall_seconds`` (first registration to the last run's
``finished_at``) and ``throughput_vs_serial`` = versions x (one audit alone) / wall time (target >= 1.6 with 2
workers on 2 cores).

    .venv/bin/python benchmarks/load_test.py          # ~20 min on 2 cores; writes benchmarks/results/load.json
    .venv/bin/python benchmarks/load_test.py --quick  # 4 versions in round 1, 2 x 2 in round 2; prints only
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from _results import write_results

os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")

ROOT = Path(__file__).resolve().parents[1]
FACTORY = "interp_ops.demo_models:shapes_cnn"
WATCH_INTERVAL_SECONDS = 15
ROUND_TIMEOUT_SECONDS = 3600
TWO_SPECS_TIMEOUT_SECONDS = 600
POLL_SECONDS = 5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_spec(folder: Path, model: str, registry: str, store: Path, lime_samples: int = 4) -> Path:
    """The registry demo spec for ``model``, reduced so one audit takes 20-40 s on this machine."""
    spec = yaml.safe_load((ROOT / "deployments/specs/shapes-registry-demo.yaml").read_text())
    spec["name"] = f"load-{model}-{lime_samples}"
    spec["model"].update(name=model, tracking_uri=registry, backfill=True, alias_on_pass=None)
    spec["data"] = "builtin:shapes-shortcut?split=val&n=16"
    spec["ops"]["lime"].update(samples=lime_samples, num_samples=300, samples_per_task=2)
    spec["ops"]["activation_max"].update(units="first:4", steps=32, batch_units=4, exemplars=4)
    spec["ops"]["dissection"].update(concepts="builtin:concepts?n=100", layers=["features.12"])
    spec["contracts"] = {"onnx.max_abs_diff": 1.0e-4}
    spec.pop("gates", None)
    spec.pop("review", None)
    spec["report"] = {"store": str(store)}
    path = folder / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def logged_versions(model: str, count: int, registry: str, first_seed: int) -> list:
    """``count`` distinct models' files in MLflow runs, ready to be registered in one quick call each."""
    import torch

    from interp_audit.registry import log_model_files
    from interp_ops.demo_models import shapes_cnn

    logged = []
    for seed in range(first_seed, first_seed + count):
        torch.manual_seed(seed)
        logged.append(log_model_files(shapes_cnn(), model, FACTORY, registry))
    return logged


def register_at_once(batches: dict[str, list], registry: str) -> float:
    """Register every logged model as a version, all at the same moment (a thread each); returns the seconds it
    took from the first to the last."""
    from interp_audit.registry import register_version

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        # versions of one model in order (each takes the next number), models side by side
        list(
            pool.map(lambda item: [register_version(item[0], logged, registry) for logged in item[1]], batches.items())
        )
    return time.monotonic() - started


def wait_published(store: Path, expected: dict[str, int], timeout: float) -> float:
    """Wait until each model has ``expected`` versions with a published run; returns the last finish time
    (``finished_at``, epoch seconds) among those models' runs. Polled every POLL_SECONDS: reading the store's runs
    costs CPU the audits share, and the finish times, not the poll, give the figures (each run's contracts and publish,
    a few seconds after ``finished_at``, are left out of every figure alike)."""
    from interp_audit import report

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if store.exists():
            runs = report.list_runs(store)
            runs = runs[runs.model_name.isin(list(expected))]
            done = {model: runs[runs.model_name == model].model_version.nunique() for model in expected}
            if all(done[model] >= count for model, count in expected.items()):
                return runs.finished_at.max().timestamp()
        time.sleep(POLL_SECONDS)
    raise TimeoutError(f"not every version was published within {timeout:.0f} s: {expected}")


def round_figures(store: Path, registry: str, versions: dict[str, list[str]], api_url: str, since: float) -> dict:
    from mlflow import MlflowClient

    from interp_audit import report

    runs = report.list_runs(store)
    published = duplicates = tagged = 0
    client = MlflowClient(tracking_uri=registry, registry_uri=registry)
    for model, numbers in versions.items():
        for number in numbers:
            own = runs[(runs.model_name == model) & (runs.model_version == number)]
            published += len(own) > 0
            duplicates += max(len(own) - 1, 0)
            tagged += "interp_audit.status" in client.get_model_version(model, number).tags
    count = sum(len(numbers) for numbers in versions.values())
    return {
        "versions": count,
        "published": published,
        "duplicates": duplicates,
        "lost": count - published,
        "tagged": tagged,
        "max_concurrent_audits": max_concurrent_audits(api_url, since),
    }


def max_concurrent_audits(api_url: str, since: float, limit: int = 2) -> int:
    """The most audits running at one moment since ``since`` (epoch seconds), from the start and end times of the
    pool's registry-audit runs and of their audit subflows (a run the server marked crashed while its process went
    on would show here). Above ``limit``, the runs overlapping at the peak are printed with their states."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    names = {"interp-audit-registry-version", "interp-audit"}
    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        flows = {
            flow.id: flow.name
            for flow in client.read_flows(flow_filter=FlowFilter(name=FlowFilterName(any_=list(names))))
        }
        flow_runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=list(names))), limit=200)
    peak, shown = 0, []
    for name in names:
        spans = [
            (run.start_time.timestamp(), run.end_time.timestamp() if run.end_time else time.time(), run)
            for run in flow_runs
            if flows.get(run.flow_id) == name and run.start_time and run.start_time.timestamp() >= since
        ]
        for start, _, _ in spans:
            overlapping = [run for begin, end, run in spans if begin <= start < end]
            peak = max(peak, len(overlapping))
            if len(overlapping) > limit and {run.id for run in overlapping} not in shown:
                shown.append({run.id for run in overlapping})
                print(f"{len(overlapping)} {name} runs at once:", flush=True)
                for run in overlapping:
                    print(" ", run.name, run.parameters.get("version"), run.state_name, run.start_time, run.end_time)
    return peak


def diagnose(api_url: str, model: str, state: Path) -> None:
    """What the server saw of ``model``'s events, triggers and runs, printed; the fleet's logs kept beside."""
    import httpx

    from flows.registry import EVENT

    with httpx.Client(base_url=api_url, timeout=30) as api:
        events = api.post("/events/filter", json={"filter": {"event": {"name": [EVENT]}}, "limit": 200}).json()
        for event in events.get("events", []):
            if event["payload"].get("name") == model:
                print("event", event["id"], event["occurred"], event["resource"], flush=True)
        for automation in api.post("/automations/filter", json={}).json():
            print("automation", automation["name"], automation["enabled"], automation["trigger"].get("match"))
        runs = api.post("/flow_runs/filter", json={"sort": "EXPECTED_START_TIME_DESC", "limit": 30}).json()
        for run in runs:
            print("run", run["name"], run["parameters"].get("version"), run["state_type"], run["state_name"])
        print("pool", api.get("/work_pools/interp-audit").json(), flush=True)
    kept = Path(tempfile.mkdtemp(prefix="interp-audit-load-logs-"))
    shutil.copytree(state / "fleet" / "logs", kept, dirs_exist_ok=True)
    print(f"the fleet's logs are kept in {kept}", flush=True)


def fleet(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "fleet", *args], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    if done.returncode != 0:
        raise RuntimeError(f"fleet {args[0]} failed: {done.stdout}{done.stderr}")
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer versions; prints only")
    args = parser.parse_args()
    round1, per_model = (4, 2) if args.quick else (20, 5)
    round2_models = ["load-b", "load-c"] if args.quick else ["load-b", "load-c", "load-d", "load-e"]

    state = Path(tempfile.mkdtemp(prefix="interp-audit-load-"))
    state.chmod(0o711)  # PostgreSQL runs as the postgres user: it must enter the folder
    store, registry = state / "reports", f"sqlite:///{state / 'registry' / 'mlflow.db'}"
    (state / "registry").mkdir()
    specs = [write_spec(state, model, registry, store) for model in ["load-a", *round2_models, "load-f"]]
    specs.append(write_spec(state, "load-f", registry, store, lime_samples=2))  # a second spec of load-f
    os.environ["MLFLOW_TRACKING_URI"] = registry
    print("logging the models' files", flush=True)
    logged = {"load-a": logged_versions("load-a", 1 + round1, registry, 0)}
    logged |= {
        model: logged_versions(model, per_model, registry, 100 * (i + 1)) for i, model in enumerate(round2_models)
    }
    logged["load-f"] = logged_versions("load-f", 1, registry, 999)

    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    watch = [option for spec in specs for option in ("--watch", str(spec))]
    started = time.monotonic()
    fleet(
        "up",
        "--state",
        str(state / "fleet"),
        "--workers",
        "2",
        "--port",
        str(port),
        "--postgres-port",
        str(free_port()),
        "--store",
        str(store),
        "--interval",
        str(WATCH_INTERVAL_SECONDS),
        *watch,
    )
    print(f"fleet up in {time.monotonic() - started:.0f} s", flush=True)
    try:
        results: dict = {
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared), CPU only",
            "workers": 2,
            "pool_limit": 2,
            "watch_interval_seconds": WATCH_INTERVAL_SECONDS,
        }
        # one audit alone
        registered = time.time()
        register_at_once({"load-a": logged["load-a"][:1]}, registry)
        alone = wait_published(store, {"load-a": 1}, ROUND_TIMEOUT_SECONDS) - registered
        results["seconds_per_audit_alone"] = round(alone, 1)
        print(f"one audit alone: {alone:.1f} s", flush=True)

        for name, batches in (
            ("round_1", {"load-a": logged["load-a"][1:]}),
            ("round_2", {model: logged[model] for model in round2_models}),
        ):
            since = time.time()
            before = {model: 1 if model == "load-a" else 0 for model in batches}
            registration = register_at_once(batches, registry)
            expected = {model: before[model] + len(items) for model, items in batches.items()}
            wall = wait_published(store, expected, ROUND_TIMEOUT_SECONDS) - since
            versions = {m: [str(v) for v in range(before[m] + 1, expected[m] + 1)] for m in batches}
            figures = round_figures(store, registry, versions, api_url, since)
            count = figures["versions"]
            figures |= {
                "registration_seconds": round(registration, 2),
                "wall_seconds": round(wall, 1),
                "throughput_vs_serial": round(count * alone / wall, 2),
            }
            results[name] = figures
            print(f"{name}: {figures}", flush=True)

        # two specs, one version, at the same moment
        from interp_audit import report
        from interp_audit.store import ReportStore

        registered = time.monotonic()
        register_at_once({"load-f": logged["load-f"]}, registry)
        both = report.list_runs(store).iloc[:0]
        while len(both) < 2 and time.monotonic() - registered < TWO_SPECS_TIMEOUT_SECONDS:
            time.sleep(POLL_SECONDS)
            runs = report.list_runs(store)
            both = runs[runs.model_name == "load-f"]
        if len(both) < 2:
            diagnose(api_url, "load-f", state)
        results["two_specs_one_version"] = {
            "published": int(len(both)),
            "distinct_specs": int(both.spec_sha256.nunique()),
            "seconds": round(time.monotonic() - registered, 1),
            "store_intact": ReportStore.open(store).check().intact,
        }
        print(f"two specs: {results['two_specs_one_version']}", flush=True)
    finally:
        fleet("down", "--state", str(state / "fleet"))
    write_results("load", results, args.quick)
    shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
