"""Model-registry tasks: fetch a registered version, list versions, write the verdict back; retried while the
registry cannot be reached (never on bad input: a missing model or version fails at once)."""

from __future__ import annotations

from prefect import task

from interp_audit import registry
from interp_audit.intake import ModelRef, registry_model, tracking_uri
from interp_audit.mlflow_connection import RegistryUnavailable
from interp_audit.spec import MlflowModelSpec
from tasks import UNCACHED, raised

# Uncached, all three: the registry's state (its "latest" version, aliases, tags) changes between runs, a
# write-back is a side effect, and a fetched version is kept on disk by ``registry_model`` already.
# Retried for about a minute (67 s of delays): a registry restarting or failing over comes back within it.
RETRIES = dict(retries=5, retry_delay_seconds=[2, 5, 10, 20, 30], **UNCACHED)


def _registry_down(_task, _task_run, state) -> bool:
    """Retry only when the registry was unreachable."""
    return isinstance(raised(state), RegistryUnavailable)


@task(name="fetch-registered-model", retry_condition_fn=_registry_down, **RETRIES)
def fetch_registered_model(model: MlflowModelSpec, store: str, base_dir: str) -> ModelRef:
    """The version the spec names, resolved to its number and downloaded."""
    return registry_model(model, store, base_dir)


@task(name="list-registered-versions", retry_condition_fn=_registry_down, **RETRIES)
def list_registered_versions(model: MlflowModelSpec, store: str) -> list[str]:
    return registry.list_versions(tracking_uri(model, store), model.name)


@task(name="registry-write-back", retry_condition_fn=_registry_down, **RETRIES)
def write_back(
    model: MlflowModelSpec, store: str, version: str, status: str, run_id: str, report: str, alias_allowed: bool = True
) -> None:
    """Tags the audited version with the verdict; the alias only when the audit passed (and, where the spec
    waits for a sign-off, only once it is approved)."""
    alias = model.alias_on_pass if status == "passed" and alias_allowed else None
    registry.write_back(
        tracking_uri(model, store), model.name, version, status=status, run_id=run_id, report=report, alias=alias
    )
