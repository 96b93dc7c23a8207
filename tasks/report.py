"""Publishing task: stage every table, move them into the store, then commit them with the run's manifest; then
remove what runs that crashed in the same store left behind."""

from __future__ import annotations

import warnings

import pyarrow as pa
from prefect import task
from rich.markup import escape

from interp_audit import progress
from interp_audit.errors import StoreFullError
from interp_audit.store import ReportStore, out_of_space
from tasks import UNCACHED, raised

# How long a staging folder or an orphaned table file must be untouched before a publish removes it. A live run's
# staging exists only for the seconds its publish takes (its tables are staged when they are all computed, and
# moved into place at once), so an hour never takes one from a run still publishing. Blobs are left to
# `interp-audit store gc`: a live run on a cluster reads the blobs it put as it started for as long as it runs.
DEBRIS_GRACE_SECONDS = 3600


def _not_out_of_space(_task, _task_run, state) -> bool:
    """Retry transient faults, never a full store: two seconds later it is as full."""
    exc = raised(state)
    return exc is not None and not isinstance(exc, StoreFullError)


@task(name="publish-report", retries=2, retry_delay_seconds=2, retry_condition_fn=_not_out_of_space, **UNCACHED)
def publish_report(store_uri: str, run_id: str, model: str, version: str, tables: dict[str, pa.Table]) -> str:
    """Retries cover transient filesystem faults; a retry restages from scratch. A failed publish leaves nothing
    of the run (its staging is discarded, and the files it moved are taken back). Uncached: publishing is the
    side effect itself, for this run's ``run_id``."""
    store = ReportStore.open(store_uri)
    store.discard(run_id)
    try:
        store.stage(run_id, model, version, tables)
        store.publish(run_id, model, version)
    except BaseException as exc:
        store.discard(run_id)
        if reason := out_of_space(exc):
            raise StoreFullError(
                f"report store {store.uri} is full ({reason}) while publishing run {run_id}: nothing of the run was "
                "published; free space there, or point report.store (or --store) at a store with room, and run "
                "the audit again"
            ) from None
        raise
    remove_debris(store)
    return store.root


def remove_debris(store: ReportStore) -> None:
    """Remove the staging folders and orphaned table files of runs that crashed, untouched for
    ``DEBRIS_GRACE_SECONDS``. The run is published already: what cannot be removed now waits for the next run."""
    try:
        removed = store.gc_debris(DEBRIS_GRACE_SECONDS)
    except (OSError, pa.ArrowException) as exc:
        warnings.warn(f"report store {store.uri}: leftovers of crashed runs not removed: {exc}", stacklevel=1)
        return
    if removed:
        progress.step(
            f"removed {len(removed)} leftover(s) of crashed runs, untouched for {DEBRIS_GRACE_SECONDS // 60} "
            f"minutes: {escape(', '.join(removed))}"
        )
