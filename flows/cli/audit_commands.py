"""The commands that check, run and serve audits: validate, run, schedule, watch, and the spec's JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from flows.cli.options import (
    EXIT_FAILED,
    EXIT_PASSED,
    Device,
    DeviceOpt,
    GpusPerTaskOpt,
    RayAddressOpt,
    RunnerOpt,
    SpecArg,
    StoreOpt,
    exits,
)
from flows.runners import Runner, RunnerChoice
from interp_audit.errors import SpecError
from interp_audit.progress import console


@exits
def validate(spec: SpecArg, device: DeviceOpt = Device.auto) -> None:
    """Check a spec, its model, layers and data without running anything (exit 0 valid, 2 invalid)."""
    from interp_audit.preflight import preflight
    from interp_audit.spec import load_spec

    loaded = load_spec(spec)
    checked = preflight(loaded, device.value)
    model = loaded.spec.model
    console.print(
        f"[green]valid:[/] {loaded.spec.name}: {model.source} model {model.name} v{checked.model.version}, "
        f"{len(model.layer_names)} layer(s), {checked.num_samples} samples, device {checked.device}"
    )


@exits
def run(
    spec: SpecArg,
    store: StoreOpt = None,
    only: Annotated[str | None, typer.Option(help="Comma-separated methods to run, e.g. lime,activation_max.")] = None,
    device: DeviceOpt = Device.auto,
    runner: RunnerOpt = Runner.thread,
    ray_address: RayAddressOpt = None,
    gpus_per_task: GpusPerTaskOpt = None,
) -> None:
    """Run an audit as a Prefect flow and publish its report (exit 0 passed, 1 failed contracts or gates)."""
    selected = [name.strip() for name in only.split(",") if name.strip()] if only else None
    summary = _run_audit(spec, store, selected, device.value, RunnerChoice(runner, ray_address, gpus_per_task))
    raise typer.Exit(EXIT_PASSED if summary["status"] == "passed" else EXIT_FAILED)


def _run_audit(spec: Path, store: str | None, only: list[str] | None, device: str, on: RunnerChoice) -> dict:
    from interp_audit.preflight import preflight
    from interp_audit.spec import load_spec
    from interp_audit.store import ReportStore

    loaded = load_spec(spec)
    loaded.spec.selected_methods(only)
    _check_reviewer_can_reach(loaded.spec)
    if loaded.spec.model.source != "mlflow":  # a registry is read inside the flow, whose task retries it
        preflight(loaded, device, store)  # fail fast, before Prefect starts
    else:
        ReportStore.open(store or loaded.spec.report.store).check_usable()
    from flows.audit import audit
    from flows.prefect_api import prefect_api

    with prefect_api():
        summary = on.applied_to(audit, store or loaded.spec.report.store)(
            spec_path=str(spec.resolve()), store=store, only=only, device=device
        )
    colour = "green" if summary["status"] == "passed" else "red"
    failed_gates = f" ({', '.join(summary['failed_gates'])})" if summary["failed_gates"] else ""
    console.print(
        f"run id: [bold]{summary['run_id']}[/]\nstatus: [{colour}]{summary['status']}[/]{escape(failed_gates)}"
        f"\nreport: {summary['store']}"
    )
    return summary


def _check_reviewer_can_reach(spec) -> None:
    """A run that waits for a sign-off must wait on a server a reviewer can reach, not the run's own ephemeral one."""
    from prefect.settings import PREFECT_API_URL

    if spec.review.wait_for_sign_off and not PREFECT_API_URL.value():
        raise SpecError(
            "review.wait_for_sign_off: the audit would wait on a temporary Prefect API no reviewer can "
            "reach; start a server (prefect server start) and set PREFECT_API_URL, or set "
            "wait_for_sign_off: false and sign off after the run"
        )


@exits
def schedule(
    spec: SpecArg,
    store: StoreOpt = None,
    runner: RunnerOpt = Runner.thread,
    ray_address: RayAddressOpt = None,
    gpus_per_task: GpusPerTaskOpt = None,
) -> None:
    """Serve the audit as a Prefect deployment on the spec's cron schedule (runs until stopped)."""
    from interp_audit.preflight import preflight
    from interp_audit.spec import load_spec

    loaded = load_spec(spec)
    if loaded.spec.schedule is None:
        raise SpecError(f"{spec}: no schedule block; add e.g. `schedule: {{cron: '0 3 * * *', timezone: UTC}}`")
    preflight(loaded)
    from flows.prefect_api import prefect_api
    from flows.schedule import serve_audit

    with prefect_api():
        serve_audit(loaded, spec.resolve(), store, RunnerChoice(runner, ray_address, gpus_per_task))


@exits
def watch(
    spec: SpecArg,
    store: StoreOpt = None,
    interval: Annotated[int, typer.Option(help="Seconds between looks at the registry.", min=5)] = 60,
    runner: RunnerOpt = Runner.thread,
    ray_address: RayAddressOpt = None,
    gpus_per_task: GpusPerTaskOpt = None,
) -> None:
    """Audit every new version of the spec's MLflow model once, and tag it with the verdict (runs until stopped).

    Serves two Prefect deployments: a watcher on an interval that emits an event per new version, and the
    audit, triggered by that event. Use a Prefect server that keeps running (PREFECT_API_URL); without one, a
    local server lives as long as this command.
    """
    from interp_audit.spec import load_spec

    loaded = load_spec(spec)
    if loaded.spec.model.source != "mlflow":
        raise SpecError(
            f"{spec}: model.source is {loaded.spec.model.source}; `watch` needs a registry model "
            "(model.source: mlflow, name, version)"
        )
    from flows.prefect_api import prefect_api
    from flows.registry import serve_watch

    with prefect_api():
        serve_watch(loaded, spec.resolve(), store, interval, RunnerChoice(runner, ray_address, gpus_per_task))


def spec_schema() -> None:
    """Print the JSON Schema of the audit spec."""
    from interp_audit.spec import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))
