"""What the runner costs and what a second worker buys: the demo audit's methods on the thread runner, on Ray with one
worker CPU and with two, and the same work called directly in one process without Prefect.

Contenders, each on a fresh report store, every op on one thread (torch and ONNX Runtime; on Ray each task asks for
one CPU and keeps to it), results never served from Prefect's cache (PREFECT_TASKS_REFRESH_CACHE):
  (d) direct: the audit flow's own code (``flows.audit.audit.fn``) with every Prefect task replaced by a plain call of
      its function, so the same ops run in the same order with no flow run, task runs, API, caching or persistence;
  (a) thread: the audit flow on Prefect's thread runner with one worker thread (tasks run one at a time, as in (b));
  (b) ray-1: the flow on a local Ray started with one CPU (``--runner ray``);
  (c) ray-2: the same with two CPUs (tasks run two at a time).
Rounds rotate the contenders' order. A Ray contender runs two audits per round on its Ray: the first pays the
workers' start-up (importing torch and Prefect) and is reported apart, as ``cold``; the second, with warm workers as
on a cluster that serves audits, is timed. Ratios use the fastest timed rounds:
``orchestration_overhead`` = (a)/(d) (target <= 1.2), ``ray_overhead_one_worker`` = (b)/(a) (target <= 1.15),
``speedup_two_workers`` = (b)/(c) (target >= 1.7). ``bytes_shipped_per_task``: what one submission of this audit
pickles, with its big inputs by value and by ref (benchmarks/bytes_shipped.py). ``task_seconds``: each task run's
time, as the Prefect API recorded it, in each runner's fastest round.

    .venv/bin/python benchmarks/scale_bench.py          # ~20 min on 2 cores; writes benchmarks/results/scale.json
    .venv/bin/python benchmarks/scale_bench.py --quick  # a smaller audit, one round each, prints only
"""

from __future__ import annotations

import os

os.environ["PREFECT_TASKS_REFRESH_CACHE"] = "true"  # before Prefect reads its settings
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "False")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402
from unittest import mock  # noqa: E402

import torch  # noqa: E402
import yaml  # noqa: E402
from _results import write_results  # noqa: E402
from bytes_shipped import per_task, shipped  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONTENDERS = ("direct", "thread", "ray-1", "ray-2")


def write_spec(folder: Path, weights: Path, quick: bool) -> Path:
    """The demo spec with the demo's methods, sized so one audit takes about a minute on one core."""
    spec = yaml.safe_load((ROOT / "deployments/specs/shapes-demo.yaml").read_text())
    spec["model"]["weights"] = str(weights)
    spec["data"] = f"builtin:shapes?split=val&n={16 if quick else 32}"
    spec["ops"]["lime"].update(samples=4 if quick else 8, num_samples=300 if quick else 500, samples_per_task=2)
    spec["ops"]["activation_max"].update(units="first:8" if quick else "first:16", steps=32 if quick else 64)
    spec["ops"]["activation_max"]["batch_units"] = 4
    spec["ops"]["dissection"]["concepts"] = f"builtin:concepts?n={60 if quick else 200}"
    spec["contracts"] = {"onnx.max_abs_diff": 1.0e-4}
    spec.pop("schedule", None)
    path = folder / "scale-spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


class _Done:
    """A finished call, with the one method the flow asks of a task future."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


class _DirectTask:
    """A Prefect task replaced by a plain call of its function: ``submit`` runs it at once. Futures among the
    arguments are passed as their results, as Prefect passes them."""

    def __init__(self, task):
        self.fn = task.fn

    def __call__(self, *args, **kwargs):
        return self.fn(*map(_resolved, args), **{key: _resolved(value) for key, value in kwargs.items()})

    def submit(self, *args, wait_for=None, **kwargs):
        return _Done(self(*args, **kwargs))


def _resolved(value):
    return value.result() if isinstance(value, _Done) else value


@contextlib.contextmanager
def without_prefect():
    """The flow modules' tasks as plain calls, a run id of our own, no artifact: the flow's body runs bare."""
    from prefect import Task

    import flows.audit
    import flows.methods

    patches = [
        mock.patch.object(module, name, _DirectTask(value))
        for module in (flows.audit, flows.methods)
        for name, value in vars(module).items()
        if isinstance(value, Task)
    ]
    patches.append(mock.patch.object(flows.audit, "flow_run", mock.Mock(get_id=lambda: uuid.uuid4())))
    patches.append(mock.patch.object(flows.audit, "create_markdown_artifact", lambda **_: None))
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        yield


@contextlib.contextmanager
def one_thread_per_task():
    """Every task keeps to one thread, as a Ray task asking for one CPU does (tasks/gpu.py reads this)."""
    with mock.patch("tasks.gpu.ray_task_cpus", lambda: 1):
        yield


def task_seconds(run_id: str) -> dict[str, float]:
    """Seconds each task of a flow run ran, by task run name, as the Prefect API recorded them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    return {run.name: round(run.total_run_time.total_seconds(), 2) for run in task_runs}


def audit_once(contender: str, spec: Path, store: Path) -> tuple[float, dict]:
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.audit import audit
    from flows.runners import RunnerChoice

    started = time.perf_counter()
    if contender == "direct":
        with without_prefect(), one_thread_per_task():
            summary = audit.fn(spec_path=str(spec), store=str(store), device="cpu")
    elif contender == "thread":
        with one_thread_per_task():
            runner = ThreadPoolTaskRunner(max_workers=1)
            on_threads = RunnerChoice("thread").applied_to(audit, str(store)).with_options(task_runner=runner)
            summary = on_threads(spec_path=str(spec), store=str(store), device="cpu")
    else:  # Ray is started by `contender_rounds`, so this joins it
        on_ray = RunnerChoice("ray", None, 0).applied_to(audit, str(store))
        summary = on_ray(spec_path=str(spec), store=str(store), device="cpu")
    seconds = time.perf_counter() - started
    if summary["status"] != "passed":
        raise RuntimeError(f"{contender}: the audit ended {summary['status']}, not passed: {summary}")
    return seconds, summary


@contextlib.contextmanager
def started_ray(contender: str):
    """For ray-N: a local Ray with N CPUs whose workers get the flow's Prefect settings; nothing otherwise."""
    if not contender.startswith("ray"):
        yield
        return
    import ray

    from flows.ray_runner import worker_env

    env = {**worker_env(), "PREFECT_TASKS_REFRESH_CACHE": "true"}
    ray.init(num_cpus=int(contender.split("-")[1]), include_dashboard=False, runtime_env={"env_vars": env})
    try:
        yield
    finally:
        ray.shutdown()


def measure(spec: Path, folder: Path, rounds: int) -> tuple[dict[str, list[float]], dict[str, list[float]], dict]:
    """Rounds in rotating order, after one untimed audit that loads what every contender reuses (imports, the
    generated concept set). Each Ray contender starts its Ray per round; its first audit there (``cold``) pays the
    workers' start-up, the second is timed. Also returns, per Prefect contender, its fastest round's task times."""
    audit_once("direct", spec, folder / "warm-up")
    timed, cold = {name: [] for name in CONTENDERS}, {name: [] for name in CONTENDERS if name.startswith("ray")}
    tasks: dict[str, dict[str, float]] = {}
    for index in range(rounds):
        for contender in CONTENDERS[index % len(CONTENDERS) :] + CONTENDERS[: index % len(CONTENDERS)]:
            with started_ray(contender):
                if contender in cold:
                    cold[contender].append(audit_once(contender, spec, folder / f"{contender}-{index}-cold")[0])
                seconds, summary = audit_once(contender, spec, folder / f"{contender}-{index}")
            if contender != "direct" and seconds <= min(timed[contender], default=seconds):
                tasks[contender] = task_seconds(summary["run_id"])
            timed[contender].append(seconds)
            print(f"round {index + 1}, {contender}: {seconds:.1f} s", flush=True)
    return timed, cold, tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller audit, one round each; prints only")
    args = parser.parse_args()
    from prefect.testing.utilities import prefect_test_harness

    from interp_ops.demo_models import ensure_demo_models

    torch.set_num_threads(1)  # the flow's own steps (export, contracts, publish) on one thread too
    rounds = 1 if args.quick else 2
    models = ensure_demo_models(Path(tempfile.gettempdir()) / "interp-audit-bench-models")
    with tempfile.TemporaryDirectory() as folder, prefect_test_harness(server_startup_timeout=120):
        spec = write_spec(Path(folder), models["honest"].weights_path, args.quick)
        seconds, cold, tasks = measure(spec, Path(folder), rounds)
        submissions, _ = shipped(spec)
    fastest = {name: min(values) for name, values in seconds.items()}
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared), CPU only",
        "spec": "deployments/specs/shapes-demo.yaml, reduced (see write_spec)" + (" --quick" if args.quick else ""),
        "seconds": {name: round(value, 2) for name, value in fastest.items()},
        "seconds_all_rounds": {name: [round(v, 2) for v in values] for name, values in seconds.items()},
        "ray_cold_seconds": {name: [round(v, 2) for v in values] for name, values in cold.items()},
        "orchestration_overhead": round(fastest["thread"] / fastest["direct"], 3),
        "ray_overhead_one_worker": round(fastest["ray-1"] / fastest["thread"], 3),
        "speedup_two_workers": round(fastest["ray-1"] / fastest["ray-2"], 3),
        "submissions": len(submissions),
        "bytes_shipped_per_task": per_task(submissions),  # pickled parameters: by value (today) and by ref (ours)
        "task_seconds": tasks,  # each task run's time in the fastest round, for the projection in the README
    }
    for key in ("orchestration_overhead", "ray_overhead_one_worker", "speedup_two_workers"):
        print(f"{key}: {report[key]}")
    write_results("scale", report, args.quick)


if __name__ == "__main__":
    main()
