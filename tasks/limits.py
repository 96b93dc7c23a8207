"""Global concurrency limits this tool relies on (the ``gpu`` slots, one slot per audited version), created on
first use. Loads neither torch nor the ops: the registry watcher's runs import it."""

from __future__ import annotations

from prefect.client.orchestration import get_client


def ensure_limit(name: str, slots: int) -> None:
    """Create a global concurrency limit unless it exists (an operator may have set it already)."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))
            except ObjectAlreadyExists:  # created meanwhile by a concurrent run
                pass
