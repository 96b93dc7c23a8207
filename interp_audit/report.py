"""Reading reports: list runs, load a table as pandas or Arrow, or query every table with DuckDB SQL.

Only published runs (those listed in ``audit_runs``) are ever returned.

>>> from interp_audit import report
>>> report.list_runs("./reports")                       # pandas DataFrame of runs
>>> report.load_table("./reports", "onnx_parity", model="shapes-cnn", version="1")
>>> report.query("./reports", "SELECT model, version, status FROM audit_runs")
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC
from pathlib import Path

import pandas as pd
import pyarrow as pa

from data_contracts import TABLES
from interp_audit.diff import RunTables, version_diff
from interp_audit.errors import NotFoundError, QueryError
from interp_audit.store import ReportStore


def _store(store: str | Path | ReportStore) -> ReportStore:
    return store if isinstance(store, ReportStore) else ReportStore.open(store)


def list_runs(store: str | Path | ReportStore, model: str | None = None, version: str | None = None) -> pd.DataFrame:
    return _store(store).runs(model, version).to_pandas()


def load_table(
    store: str | Path | ReportStore,
    table: str,
    model: str | None = None,
    version: str | None = None,
    run_id: str | None = None,
    as_arrow: bool = False,
) -> pd.DataFrame | pa.Table:
    data = _store(store).read(table, model, version, run_id)
    return data if as_arrow else data.to_pandas()


READ_ONLY = (
    "queries are read-only over the store's tables: one SELECT statement, no files read or written "
    "outside the store's published tables, no extensions, no settings"
)


def query(store: str | Path | ReportStore, sql: str) -> pa.Table:
    """Run one DuckDB SELECT over every table, each a view of its published rows; nothing else is reachable.

    The guarantees come from DuckDB itself, not from reading the SQL: once the tables are registered, file
    access is switched off (no read_text, glob, COPY, ATTACH, INSTALL or LOAD) and the configuration is locked
    (no SET); Python variables are not scanned as tables, nothing spills to disk, and the statement must parse
    as exactly one SELECT."""
    import duckdb

    opened = _store(store)
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(f"{' '.join(str(exc).split())}; the tables are: {_table_list(opened)}") from None
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        kinds = ", ".join(statement.type.name for statement in statements) or "none"
        raise QueryError(f"refused ({len(statements)} statement(s): {kinds}): {READ_ONLY}")
    connection = duckdb.connect(
        config={
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "python_enable_replacements": False,  # no Python variable as a table
            "temp_directory": "",
        }
    )  # no spill files outside the store
    for name in TABLES:  # every table, empty where nothing is published yet, so counts are 0, not errors
        connection.register(name, opened.read(name))
    connection.execute("SET enable_external_access = false")
    connection.execute("SET lock_configuration = true")
    try:
        return connection.sql(sql).to_arrow_table()
    except duckdb.PermissionException as exc:
        raise QueryError(f"refused ({' '.join(str(exc).split())}): {READ_ONLY}") from None
    except duckdb.Error as exc:
        raise QueryError(f"{' '.join(str(exc).split())}; the tables are: {_table_list(opened)}") from None
    finally:
        connection.close()


def _table_list(store: ReportStore) -> str:
    with_data = store.tables_with_data()
    empty = [name for name in TABLES if name not in with_data]
    return ", ".join(with_data or ["none with rows yet (run an audit first)"]) + (
        f"; empty so far: {', '.join(empty)}" if empty else ""
    )


def find_run(store: str | Path | ReportStore, run_id: str) -> dict:
    """The ``audit_runs`` row of a run, by full id or a unique prefix."""
    runs = _store(store).runs().to_pylist()
    matches = [run for run in runs if run["run_id"].startswith(run_id)]
    if len(matches) != 1:
        found = "no run" if not matches else f"{len(matches)} runs"
        raise NotFoundError(f"{found} with id {run_id!r}; `interp-audit report list` shows the run ids")
    return matches[0]


def review_run(
    store: str | Path | ReportStore, run_id: str, *, approve: bool, reviewer: str, comment: str | None
) -> dict:
    """Append a sign-off of a run, bound to the SHA-256 of its published tables, and for an approval the run's
    model card (``model_cards``); returns the review row."""
    import uuid
    from datetime import datetime

    opened = _store(store)
    run = find_run(opened, run_id)
    row = {
        "run_id": run["run_id"],
        "review_id": str(uuid.uuid4()),
        "reviewer": reviewer,
        "decision": "approved" if approve else "rejected",
        "comment": comment,
        "reviewed_at": datetime.now(UTC),
        "tables_sha256": opened.tables_sha256(run["run_id"]),
    }
    opened.append("reviews", row["review_id"], run["model_name"], run["model_version"], pa.Table.from_pylist([row]))
    if approve:  # the approved version's model card, beside the run for the inventory
        from interp_audit.model_card import store_model_card

        store_model_card(opened, row)
    return row


def review_state(store: str | Path | ReportStore, run: dict) -> tuple[pd.DataFrame, str]:
    """A run's reviews, oldest first, each with ``matches_tables`` (its hash is still the tables'), and the current
    SHA-256 of the run's published tables."""
    opened = _store(store)
    current = opened.tables_sha256(run["run_id"])
    reviews = _reviews_of(opened, run)
    return reviews.assign(matches_tables=reviews["tables_sha256"] == current), current


def _reviews_of(store: ReportStore, run: dict) -> pd.DataFrame:
    return store.read("reviews", run_id=run["run_id"]).to_pandas().sort_values("reviewed_at")


def run_tables(store: str | Path | ReportStore, run_id: str) -> RunTables:
    """A published run's tables by name, for diffs and gates."""
    opened = _store(store)
    return lambda name: opened.read(name, run_id=run_id).to_pandas()


def approval(store: str | Path | ReportStore, run: dict) -> pd.Timestamp | None:
    """When the run's standing review approved it, if its latest review is an approval of the current tables."""
    opened = _store(store)
    reviews = _reviews_of(opened, run)
    if reviews.empty or reviews.iloc[-1].decision != "approved":
        return None
    latest = reviews.iloc[-1]
    current = opened.tables_sha256(run["run_id"])
    return latest.reviewed_at if latest.tables_sha256 == current else None


@dataclass(frozen=True)
class Baseline:
    """The earlier version's run a run was compared with, and how it was chosen (approved or passed)."""

    run_id: str
    version: str
    basis: str


def find_baseline(store: str | Path | ReportStore, model: str, version: str) -> Baseline | None:
    """The run of another version of ``model`` to compare a new run with: the most recently approved one (whose
    tables still match the approval), else the latest passed one; None when no other version has either."""
    opened = _store(store)
    runs = [run for run in opened.runs(model).to_pylist() if run["model_version"] != version]
    approved = [(when, run) for run in runs if (when := approval(opened, run)) is not None]
    if approved:
        run = max(approved, key=lambda pair: pair[0])[1]
        return Baseline(run["run_id"], run["model_version"], "approved")
    passed = [run for run in runs if run["status"] == "passed"]
    return Baseline(passed[-1]["run_id"], passed[-1]["model_version"], "passed") if passed else None


COMPARABLE = ("passed", "failed_gates")  # runs whose tables held their contracts; a gate verdict does not spoil them


def latest_comparable_run(store: str | Path | ReportStore, model: str, version: str) -> dict:
    """The latest run of a version whose contracts held (passed, or failed only its gates)."""
    runs = _store(store).runs(model, version).to_pylist()
    comparable = [run for run in runs if run["status"] in COMPARABLE]
    if not comparable:
        found = ", ".join(f"{run['run_id'][:8]} {run['status']}" for run in runs) or "no runs"
        raise NotFoundError(
            f"{model} v{version} has no run whose contracts held ({found}); `interp-audit report "
            f"list --model {model}` shows the runs"
        )
    return comparable[-1]


def diff_versions(store: str | Path | ReportStore, model: str, old_version: str, new_version: str) -> pd.DataFrame:
    """``version_diffs`` rows between the latest runs of two versions whose contracts held; computed and appended
    (in a file of their own) the first time, read back after."""
    import uuid

    opened = _store(store)
    old, new = (latest_comparable_run(opened, model, v) for v in (old_version, new_version))

    def recorded() -> pd.DataFrame:
        diffs = opened.read("version_diffs", run_id=new["run_id"]).to_pandas()
        return diffs[diffs["baseline_run_id"] == old["run_id"]].reset_index(drop=True)

    if len(recorded()):
        return recorded()
    rows = version_diff(run_tables(opened, old["run_id"]), run_tables(opened, new["run_id"]))
    if not rows:
        raise NotFoundError(
            f"{model} v{old_version} and v{new_version} share no method results to compare "
            "(same samples for LIME, same layers for dissection and activation maximization)"
        )
    table = diff_table(new["run_id"], Baseline(old["run_id"], old_version, "requested"), rows)
    file_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"version-diff:{old['run_id']}:{new['run_id']}"))
    opened.append("version_diffs", file_id, model, new_version, table)
    return recorded()


def diff_table(run_id: str, baseline: Baseline, rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "run_id": run_id,
                "baseline_run_id": baseline.run_id,
                "baseline_version": baseline.version,
                "baseline_basis": baseline.basis,
                **row,
            }
            for row in rows
        ]
    )
