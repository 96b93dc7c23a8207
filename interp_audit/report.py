"""Reading reports: list runs, load a table as pandas or Arrow, or query every table with DuckDB SQL.

Only published runs (those listed in ``audit_runs``) are ever returned.

>>> from interp_audit import report
>>> report.list_runs("./reports")                       # pandas DataFrame of runs
>>> report.load_table("./reports", "onnx_parity", model="shapes-cnn", version="1")
>>> report.query("./reports", "SELECT model, version, status FROM audit_runs")
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa

from interp_audit.errors import NotFoundError, QueryError
from interp_audit.store import ReportStore


def _store(store: str | Path | ReportStore) -> ReportStore:
    return store if isinstance(store, ReportStore) else ReportStore.open(store)


def list_runs(store: str | Path | ReportStore, model: str | None = None, version: str | None = None) -> pd.DataFrame:
    return _store(store).runs(model, version).to_pandas()


def load_table(store: str | Path | ReportStore, table: str, model: str | None = None, version: str | None = None,
               run_id: str | None = None, as_arrow: bool = False) -> pd.DataFrame | pa.Table:
    data = _store(store).read(table, model, version, run_id)
    return data if as_arrow else data.to_pandas()


def query(store: str | Path | ReportStore, sql: str) -> pa.Table:
    """Run DuckDB SQL with every table that has data available as a view of its published rows."""
    import duckdb

    opened = _store(store)
    connection = duckdb.connect()
    for name in opened.tables_with_data():
        connection.register(name, opened.read(name))
    try:
        relation = connection.sql(sql)
    except duckdb.Error as exc:
        tables = ", ".join(opened.tables_with_data()) or "none yet: run an audit first"
        raise QueryError(f"{' '.join(str(exc).split())}; the tables are: {tables}") from None
    return relation.to_arrow_table() if relation is not None else pa.table({})


def find_run(store: str | Path | ReportStore, run_id: str) -> dict:
    """The ``audit_runs`` row of a run, by full id or a unique prefix."""
    runs = _store(store).runs().to_pylist()
    matches = [run for run in runs if run["run_id"].startswith(run_id)]
    if len(matches) != 1:
        found = "no run" if not matches else f"{len(matches)} runs"
        raise NotFoundError(f"{found} with id {run_id!r}; `interp-audit report list` shows the run ids")
    return matches[0]


def review_run(store: str | Path | ReportStore, run_id: str, *, approve: bool, reviewer: str,
               comment: str | None) -> dict:
    """Append a sign-off of a run, bound to the SHA-256 of its published tables; returns the review row."""
    import uuid
    from datetime import datetime, timezone

    opened = _store(store)
    run = find_run(opened, run_id)
    row = {
        "run_id": run["run_id"], "review_id": str(uuid.uuid4()), "reviewer": reviewer,
        "decision": "approved" if approve else "rejected", "comment": comment,
        "reviewed_at": datetime.now(timezone.utc),
        "tables_sha256": opened.tables_sha256(run["run_id"], run["model_name"], run["model_version"]),
    }
    opened.append_review(row["review_id"], run["model_name"], run["model_version"], pa.Table.from_pylist([row]))
    return row


def review_state(store: str | Path | ReportStore, run: dict) -> tuple[pd.DataFrame, str]:
    """A run's reviews, oldest first, and the current SHA-256 of its published tables to compare them with."""
    opened = _store(store)
    reviews = opened.read("reviews", run_id=run["run_id"]).to_pandas().sort_values("reviewed_at")
    return reviews, opened.tables_sha256(run["run_id"], run["model_name"], run["model_version"])
