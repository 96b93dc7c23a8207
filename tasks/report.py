"""Publishing task: stage every table, move them into the store, then commit them with the run's manifest."""

from __future__ import annotations

import pyarrow as pa
from prefect import task

from interp_audit.store import ReportStore
from tasks import UNCACHED


@task(name="publish-report", retries=2, retry_delay_seconds=2, **UNCACHED)
def publish_report(store_uri: str, run_id: str, model: str, version: str, tables: dict[str, pa.Table]) -> str:
    """Retries cover transient filesystem faults; a retry restages from scratch. Uncached: publishing is the
    side effect itself, for this run's ``run_id``."""
    store = ReportStore.open(store_uri)
    store.discard(run_id)
    try:
        store.stage(run_id, model, version, tables)
        store.publish(run_id, model, version)
    except BaseException:
        store.discard(run_id)
        raise
    return store.root
