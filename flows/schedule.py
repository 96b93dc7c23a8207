"""Serving the audit as a Prefect deployment on the spec's cron schedule."""

from __future__ import annotations

from pathlib import Path

from prefect.client.schemas.schedules import CronSchedule

from flows.audit import audit
from flows.runners import RunnerChoice
from interp_audit.spec import LoadedSpec


def audit_deployment(loaded: LoadedSpec, spec_path: Path, store: str | None, on: RunnerChoice):
    """The deployment for one spec: named after the audit, parameters pinned to the spec file. It is served from
    this process's flow object, so the runner ``on`` chose is the one its runs use."""
    schedule = loaded.spec.schedule
    return on.applied_to(audit, store or loaded.spec.report.store).to_deployment(
        name=loaded.spec.name,
        parameters={"spec_path": str(spec_path), "store": store},
        schedules=[CronSchedule(cron=schedule.cron, timezone=schedule.timezone)],
        description=f"interp-audit of {loaded.spec.model.name} from {spec_path}",
        tags=["interp-audit"],
    )


def serve_audit(loaded: LoadedSpec, spec_path: Path, store: str | None, on: RunnerChoice) -> None:
    from prefect import serve

    serve(audit_deployment(loaded, spec_path, store, on))
