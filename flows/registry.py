"""Registry-driven audits: a watcher turns new model versions into Prefect events, and a triggered flow audits
each (model, version, spec) exactly once and writes the verdict back to the registry.

Exactly once, in two layers: the watcher gives each event an id derived from (model, version, spec hash), so a
restarted watcher, a second watcher or a re-sent event repeats an id Prefect's triggers have already seen; and
the triggered flow, under a one-slot concurrency limit per key, audits only if the report store holds no
published run for that key yet.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta
from pathlib import Path

from prefect import flow
from prefect.concurrency.sync import concurrency
from prefect.events import DeploymentEventTrigger, emit_event

from flows.runners import Runner, RunnerChoice
from interp_audit import progress
from interp_audit.errors import SpecError
from interp_audit.report import list_runs
from interp_audit.spec import LoadedSpec, load_spec, with_model_version
from tasks.limits import ensure_limit
from tasks.registry import list_registered_versions

EVENT = "interp_audit.model_version.created"
EVENT_NAMESPACE = uuid.UUID("6f1c3a52-6d0e-4d36-9a43-1f0d2f4e8a11")
KEY_LEASE_SECONDS = 60  # how long after its holder died a version's audit slot is free again


def audit_key(model: str, version: str, spec_sha256: str) -> str:
    return hashlib.sha256(f"{model}\0{version}\0{spec_sha256}".encode()).hexdigest()[:32]


def _registry_spec(spec_path: str) -> LoadedSpec:
    loaded = load_spec(spec_path)
    if loaded.spec.model.source != "mlflow":
        raise SpecError(
            f"{spec_path}: model.source is {loaded.spec.model.source}; watching needs a registry model "
            "(model.source: mlflow)"
        )
    return loaded


def published_run(store: str, model: str, version: str, spec_sha256: str) -> dict | None:
    """The published audit of this (model, version, spec), if there is one."""
    runs = list_runs(store, model, version)
    runs = runs[runs.spec_sha256 == spec_sha256] if len(runs) else runs
    return None if runs.empty else runs.iloc[0].to_dict()


def key_lock(key: str):
    """Hold the key's one-slot concurrency limit. The holder renews its lease while it lives; when it dies (killed,
    machine lost), the server frees the slot once the lease expires, so no later audit of the key waits for good.
    This needs a server that keeps leases across restarts (see flows/prefect_api.py and the README)."""
    ensure_limit(f"interp-audit-{key}", 1)
    return concurrency(f"interp-audit-{key}", occupy=1, lease_duration=KEY_LEASE_SECONDS)


@flow(name="interp-audit-registry-version")
def audit_registered_version(
    spec_path: str,
    version: str,
    store: str | None = None,
    device: str = "auto",
    runner: Runner = Runner.thread,
    ray_address: str | None = None,
    gpus_per_task: float | None = None,
) -> dict:
    """Audit one registered version unless this spec already audited it, on the runner named (flows/runners.py);
    returns that run's summary."""
    loaded = with_model_version(_registry_spec(spec_path), version)
    spec = loaded.spec
    store_uri = store or spec.report.store
    with key_lock(audit_key(spec.model.name, version, loaded.sha256)):
        done = published_run(store_uri, spec.model.name, version, loaded.sha256)
        if done is not None:
            progress.step(f"{spec.model.name} v{version} was already audited with this spec (run {done['run_id']})")
            return {"run_id": done["run_id"], "status": done["status"], "skipped": True}
        from flows.audit import audit  # here, not above: the watcher's runs start without loading torch and ops

        on = RunnerChoice(runner, ray_address, gpus_per_task)
        return on.applied_to(audit, store_uri)(spec_path=spec_path, store=store, device=device, version=version)


@flow(name="interp-audit-watch", persist_result=True)
def watch_registry(spec_path: str, store: str | None = None) -> list[str]:
    """Emit one event per version of the spec's model that this spec has not audited yet; returns them."""
    return announce_new_versions(spec_path, store)


@flow(name="interp-audit-watch-all", persist_result=True)
def watch_registries(spec_paths: list[str], store: str | None = None) -> dict[str, list[str]]:
    """Every spec's look at the registry in one run (``interp-audit fleet``): a fleet that watches many specs
    starts one process per interval, not one per spec."""
    return {path: announce_new_versions(path, store) for path in spec_paths}


def announce_new_versions(spec_path: str, store: str | None) -> list[str]:
    """One event per version of the spec's model that this spec has not audited yet; returns those versions."""
    loaded = _registry_spec(spec_path)
    model = loaded.spec.model
    store_uri = store or loaded.spec.report.store
    versions = list_registered_versions(model, store_uri)
    since = 0 if model.backfill else _watermark(model.name, loaded.sha256, versions)
    pending = [v for v in versions if int(v) > since and published_run(store_uri, model.name, v, loaded.sha256) is None]
    for version in pending:
        emit_event(
            event=EVENT,
            resource={
                "prefect.resource.id": f"mlflow.model-version.{model.name}.{version}",
                "interp_audit.spec": loaded.sha256[:16],
            },
            payload={"name": model.name, "version": version, "spec_sha256": loaded.sha256},
            id=uuid.uuid5(EVENT_NAMESPACE, audit_key(model.name, version, loaded.sha256)),
        )
    progress.step(
        f"watch {model.name}: versions {', '.join(versions) or 'none'}; "
        f"new for this spec: {', '.join(pending) or 'none'}"
    )
    return pending


def _watermark(model_name: str, spec_sha256: str, versions: list[str]) -> int:
    """The highest version that existed when this spec was first watched, kept in a Prefect variable so that a
    restarted watcher keeps it (0 when the model had no versions yet)."""
    from prefect.variables import Variable

    name = f"interp_audit_watch_from_{spec_sha256[:16]}"
    found = Variable.get(name)
    if found is not None:
        return int(found)
    watermark = max((int(v) for v in versions), default=0)
    Variable.set(name, watermark, tags=["interp-audit", model_name])
    return watermark


def registry_deployments(
    loaded: LoadedSpec, spec_path: Path, store: str | None, interval_seconds: int, on: RunnerChoice
):
    """The spec's watcher on an interval, and its per-version audit (``auditor_deployment``): what
    ``interp-audit watch`` serves."""
    watcher = watch_registry.to_deployment(
        name=f"{loaded.spec.name}-watch",
        parameters={"spec_path": str(spec_path), "store": store},
        interval=timedelta(seconds=interval_seconds),
        tags=["interp-audit"],
        description=f"lists versions of {loaded.spec.model.name} and announces new ones",
    )
    return watcher, auditor_deployment(loaded, spec_path, store, on)


def auditor_deployment(loaded: LoadedSpec, spec_path: Path, store: str | None, on: RunnerChoice, **options):
    """The per-version audit of a spec, with a trigger on the watcher's events for that spec; ``on``: the runner of
    the audits (parameters of the per-version flow); ``options`` go to ``to_deployment``."""
    trigger = DeploymentEventTrigger(
        expect={EVENT},
        match={"interp_audit.spec": loaded.sha256[:16]},
        parameters={
            "spec_path": str(spec_path),
            "store": store,
            "version": "{{ event.payload.version }}",
            **on.parameters(),
        },
    )
    return audit_registered_version.to_deployment(
        name=loaded.spec.name,
        triggers=[trigger],
        tags=["interp-audit"],
        parameters={"spec_path": str(spec_path), "store": store, **on.parameters()},
        description=f"audits each new version of {loaded.spec.model.name} once",
        **options,
    )


def serve_watch(
    loaded: LoadedSpec, spec_path: Path, store: str | None, interval_seconds: int, on: RunnerChoice
) -> None:
    from prefect import serve

    serve(*registry_deployments(loaded, spec_path, store, interval_seconds, on))
