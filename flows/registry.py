"""Registry-driven audits: a watcher turns new model versions into Prefect events, and a triggered flow audits
each (model, version, spec) exactly once and writes the verdict back to the registry.

Exactly once, in two layers: the watcher gives each event an id derived from (model, version, spec hash), so a
restarted watcher, a second watcher or a re-sent event repeats an id Prefect's triggers have already seen; and
the triggered flow, under a one-slot concurrency limit per key, audits only if the report store holds no
published run for that key yet.
"""

from __future__ import annotations

import hashlib
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import httpx
from prefect import flow, get_run_logger
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.concurrency.sync import concurrency
from prefect.events import DeploymentEventTrigger, emit_event

from flows.runners import Runner, RunnerChoice
from interp_audit import progress
from interp_audit.errors import AuditError, SpecError
from interp_audit.report import list_runs
from interp_audit.spec import LoadedSpec, load_spec, with_model_version
from tasks.limits import ensure_limit
from tasks.registry import list_registered_versions

EVENT = "interp_audit.model_version.created"
EVENT_NAMESPACE = uuid.UUID("6f1c3a52-6d0e-4d36-9a43-1f0d2f4e8a11")
KEY_LEASE_SECONDS = 60  # how long after its holder died a version's audit slot is free again
# A look at the registry that starts while the last one still runs (a slow registry, a busy machine) is cancelled:
# watcher runs never pile up, nor take the slots audits wait for
ONE_LOOK_AT_A_TIME = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)
MAX_CRASHES = 3  # a version whose audit crashed this often is not re-run again by the deployment's trigger
# A version's audit that failed because the Prefect API did not answer (its server or database restarting) starts
# again after these waits. Its run ends Failed otherwise, and the watcher's event for the version, de-duplicated by
# its id, would bring it back only after the server's 30-minute window.
API_RETRY_WAITS = (10, 30, 60)


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


@contextmanager
def key_lock(key: str) -> Iterator[None]:
    """Hold the key's one-slot concurrency limit. The holder renews its lease while it lives; when it dies (killed,
    machine lost), the server frees the slot once the lease expires, so no later audit of the key waits for good.
    This needs a server that keeps leases across restarts (see flows/prefect_api.py and the README).

    Giving the slot back is best effort: when the API cannot be reached at that moment (a server restarting), the
    audit, published already, does not fail for it; the lease frees the slot within KEY_LEASE_SECONDS."""
    name = f"interp-audit-{key}"
    ensure_limit(name, 1)
    held = concurrency(name, occupy=1, lease_duration=KEY_LEASE_SECONDS)
    held.__enter__()
    try:
        yield
    except BaseException as exc:
        _give_back(held, name, exc)
        raise
    _give_back(held, name, None)


def _give_back(held, name: str, exc: BaseException | None) -> None:
    try:
        held.__exit__(type(exc) if exc else None, exc, exc.__traceback__ if exc else None)
    except httpx.TransportError as error:
        warnings.warn(
            f"{name}: the slot could not be given back ({error!r}); it is free again when its lease expires, "
            f"within {KEY_LEASE_SECONDS} s",
            stacklevel=2,
        )


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
    on = RunnerChoice(runner, ray_address, gpus_per_task)
    for wait in API_RETRY_WAITS:
        try:
            return _audit_unless_published(loaded, version, spec_path, store, device, on)
        except Exception as exc:
            if not api_unavailable(exc):
                raise
            get_run_logger().warning(
                f"the Prefect API did not answer ({type(exc).__name__}: {exc}); the audit of v{version} starts "
                f"again in {wait} s, taking what finished from the result cache"
            )
            time.sleep(wait)
    return _audit_unless_published(loaded, version, spec_path, store, device, on)


def _audit_unless_published(
    loaded: LoadedSpec, version: str, spec_path: str, store: str | None, device: str, on: RunnerChoice
) -> dict:
    spec = loaded.spec
    store_uri = store or spec.report.store
    from prefect.runtime import deployment

    if deployment.id:  # a run of the deployment, which re-runs it when it crashes
        refuse_after_repeated_crashes(deployment.id, spec.model.name, version)
    with key_lock(audit_key(spec.model.name, version, loaded.sha256)):
        done = published_run(store_uri, spec.model.name, version, loaded.sha256)
        if done is not None:
            progress.step(f"{spec.model.name} v{version} was already audited with this spec (run {done['run_id']})")
            return {"run_id": done["run_id"], "status": done["status"], "skipped": True}
        from flows.audit import audit  # here, not above: the watcher's runs start without loading torch and ops

        return on.applied_to(audit, store_uri)(spec_path=spec_path, store=store, device=device, version=version)


def api_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is the Prefect API not answering: a connection that failed or a server
    error (5xx), which a restarting server or database gives; not a fault of the audit."""
    from prefect.exceptions import PrefectHTTPStatusError

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, httpx.TransportError):
            return True
        if isinstance(seen, PrefectHTTPStatusError) and seen.response.status_code >= 500:
            return True
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
    return False


def refuse_after_repeated_crashes(deployment_id: str, model: str, version: str) -> None:
    """A deployment re-runs its crashed runs (``auditor_deployment``); an audit that kills its process each time
    (out of memory, say) stops after MAX_CRASHES, with the reason, instead of crashing forever."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        crashed = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.CRASHED])),
            ),
            sort=FlowRunSort.START_TIME_DESC,
        )
    crashes = [r for r in crashed if str(r.parameters.get("version")) == str(version)]
    if len(crashes) >= MAX_CRASHES:
        raise AuditError(
            f"the audit of {model} v{version} crashed {len(crashes)} times (last: flow run {crashes[0].name}): "
            "read that run's logs for what killed it, fix it, then run it again by hand"
        )


@flow(name="interp-audit-watch", persist_result=True)
def watch_registry(spec_path: str, store: str | None = None) -> list[str]:
    """Emit one event per version of the spec's model that this spec has not audited yet; returns them."""
    return announce_new_versions(spec_path, store)


@flow(name="interp-audit-watch-all", persist_result=True)
def watch_registries(
    spec_paths: list[str], store: str | None = None, look_every_seconds: float = 60, window_seconds: float = 0
) -> dict[str, list[str]]:
    """Every spec's look at the registry, every ``look_every_seconds`` until ``window_seconds`` after the run's
    scheduled start (one look without a window), in one process (``interp-audit fleet`` schedules one run per
    window). A process costs far more than a look: starting one per look every 15 s (~10 s of CPU each: Prefect,
    the flow's imports) kept a whole core of two busy and slowed every audit. A look that fails (a registry or API
    down beyond its retries) is logged and the next one tries again; the run fails if its last look did."""
    from prefect.runtime import flow_run

    scheduled = flow_run.scheduled_start_time
    end = (scheduled.timestamp() if scheduled else time.time()) + window_seconds
    announced: dict[str, list[str]] = {path: [] for path in spec_paths}
    while True:
        failure = None
        for path in spec_paths:
            try:
                # a version stays announced (under one event id) until its audit publishes: listed once here
                announced[path] += [v for v in announce_new_versions(path, store) if v not in announced[path]]
            except Exception as exc:  # the window goes on; the run fails if this was its last look
                failure = exc
                get_run_logger().warning(f"the look at {path}'s registry failed: {type(exc).__name__}: {exc}")
        if time.time() + look_every_seconds > end:
            if failure is not None:
                raise failure
            return announced
        time.sleep(look_every_seconds)


def announce_new_versions(spec_path: str, store: str | None) -> list[str]:
    """One event per version of the spec's model that this spec has not audited yet; returns those versions."""
    loaded = _registry_spec(spec_path)
    model = loaded.spec.model
    store_uri = store or loaded.spec.report.store
    versions = list_registered_versions(model, store_uri)
    since = 0 if model.backfill else _watermark(model.name, loaded.sha256, versions)
    pending = [v for v in versions if int(v) > since and published_run(store_uri, model.name, v, loaded.sha256) is None]
    for version in pending:
        emit_event(**version_event(loaded, version))
    progress.step(
        f"watch {model.name}: versions {', '.join(versions) or 'none'}; "
        f"new for this spec: {', '.join(pending) or 'none'}"
    )
    return pending


def version_event(loaded: LoadedSpec, version: str) -> dict:
    """The watcher's announcement of a version (``emit_event``'s arguments). Its resource names the spec by its
    ``name``, the one thing a trigger declared in YAML (deployments/prefect.yaml) can know of it: the audit deployment
    of that spec (``audit_triggers``) runs on it. Its id names the spec by content, so that an edited spec announces
    the version anew."""
    model = loaded.spec.model
    return {
        "event": EVENT,
        "resource": {
            "prefect.resource.id": f"mlflow.model-version.{model.name}.{version}",
            "interp_audit.spec": loaded.spec.name,
        },
        "payload": {"name": model.name, "version": version, "spec_sha256": loaded.sha256},
        "id": uuid.uuid5(EVENT_NAMESPACE, audit_key(model.name, version, loaded.sha256)),
    }


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
        concurrency_limit=ONE_LOOK_AT_A_TIME,
    )
    return watcher, auditor_deployment(loaded, spec_path, store, on)


def auditor_deployment(loaded: LoadedSpec, spec_path: Path, store: str | None, on: RunnerChoice, **options):
    """The per-version audit of a spec, named after it, with its ``audit_triggers``. ``on``: the runner of the audits
    (parameters of the per-version flow); ``options`` go to ``to_deployment``."""
    return audit_registered_version.to_deployment(
        name=loaded.spec.name,
        triggers=audit_triggers(loaded.spec.name),
        tags=["interp-audit"],
        parameters={"spec_path": str(spec_path), "store": store, **on.parameters()},
        description=f"audits each new version of {loaded.spec.model.name} once",
        **options,
    )


def audit_triggers(spec_name: str) -> list[DeploymentEventTrigger]:
    """The two triggers of the audit deployment named ``spec_name``: the watcher's events for that spec, and a crash
    of one of its own runs (its worker or machine died; ``flows.fleet`` marks silent runs crashed), which runs the
    version again: the new run reuses the crashed run's finished tasks from the result cache. They set the version
    only; the run takes its other parameters from the deployment. deployments/prefect.yaml writes the same triggers
    for its spec (tests/test_fleet.py holds the two equal)."""
    announced = DeploymentEventTrigger(
        name="new version",
        expect={EVENT},
        match={"interp_audit.spec": spec_name},
        parameters={"version": "{{ event.payload.version }}"},
    )
    crashed = DeploymentEventTrigger(
        name="re-run a crashed audit",
        expect={"prefect.flow-run.Crashed"},
        match_related=[
            {"prefect.resource.role": "flow", "prefect.resource.name": audit_registered_version.name},
            {"prefect.resource.role": "deployment", "prefect.resource.name": spec_name},
        ],
        parameters={"version": "{{ flow_run.parameters.version }}"},
    )
    return [announced, crashed]


def serve_watch(
    loaded: LoadedSpec, spec_path: Path, store: str | None, interval_seconds: int, on: RunnerChoice
) -> None:
    from prefect import serve

    serve(*registry_deployments(loaded, spec_path, store, interval_seconds, on))
