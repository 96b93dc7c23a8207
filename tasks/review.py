"""Review tasks: the diff with the baseline version and the spec's gates, both before the report is published."""

from __future__ import annotations

import pyarrow as pa
from prefect import task

from interp_audit.diff import tables_of, version_diff
from interp_audit.gates import evaluate_gates
from interp_audit.report import Baseline, find_baseline, run_tables
from interp_audit.verdict import Requirement, Verdict, verdict
from tasks import UNCACHED


@task(name="compare-with-baseline", retries=2, retry_delay_seconds=2, **UNCACHED)
def compare_with_baseline(
    store_uri: str, model: str, version: str, tables: dict[str, pa.Table]
) -> tuple[list[dict], Baseline | None]:
    """``version_diffs`` rows against the approved (else the latest passed) run of another version of the model.

    Retries cover a transient fault reading the report store. Uncached: the store's baseline changes as runs
    are published and approved, and the tables carry this run's ``run_id``."""
    baseline = find_baseline(store_uri, model, version)
    if baseline is None:
        return [], None
    return version_diff(run_tables(store_uri, baseline.run_id), tables_of(tables)), baseline


@task(name="gates", **UNCACHED)
def check_gates(gates: list, tables: dict[str, pa.Table], diffs: list[dict], baseline: Baseline | None) -> list[dict]:
    """Uncached: cheap, and its tables carry this run's ``run_id``, so no key could match another run's."""
    return evaluate_gates(gates, tables_of(tables), diffs, baseline)


@task(name="verdict", retries=2, retry_delay_seconds=2, **UNCACHED)
def check_verdict(store_uri: str, model: str, version: str, require: Requirement | None = None) -> Verdict:
    """Whether ``model`` ``version`` is cleared (``interp-audit verdict`` as a task), for a promotion flow to branch
    on ``.cleared``. Retries cover a transient fault reading the report store; uncached: reviews change."""
    return verdict(store_uri, model, version, require)
