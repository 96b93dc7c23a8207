"""Whether a model version is cleared for production, as a pipeline reads it: its latest audit passed and, where
required, a standing approval of exactly the tables that audit published.

The answer is a ``Verdict``; its JSON Schema is ``docs/verdict.schema.json`` (``python -m interp_audit.verdict``
writes it). ``SCHEMA_VERSION`` changes whenever a key is removed or changes meaning; new keys may be added.
"""

from __future__ import annotations

import enum
import json
from datetime import datetime
from pathlib import Path

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field

from interp_audit.diff import headline, summarize
from interp_audit.errors import NotFoundError
from interp_audit.report import Baseline, review_state
from interp_audit.store import ReportStore

SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).resolve().parents[1] / "docs" / "verdict.schema.json"


class Requirement(str, enum.Enum):
    """What clears a version: its latest audit passed, or passed and approved (tables unchanged since)."""

    passed = "passed"
    approved = "approved"


class _Record(BaseModel):
    """A part of the verdict; readers must ignore keys they do not know (later minor versions may add some)."""


class AuditRun(_Record):
    run_id: str
    status: str = Field(description="audit_runs.status: passed, failed_contracts or failed_gates")
    started_at: datetime
    finished_at: datetime
    spec_sha256: str
    audit_name: str


class GateValue(_Record):
    gate: str
    metric: str
    value: float | None
    min: float | None
    max: float | None
    outcome: str = Field(description="passed, failed or skipped")
    detail: str


class ContractFailure(_Record):
    table_name: str
    expectation: str
    column: str | None
    observed_value: str | None


class Review(_Record):
    reviewer: str
    decision: str = Field(description="approved or rejected")
    reviewed_at: datetime
    comment: str | None
    tables_sha256: str = Field(description="the run's tables hash the review was bound to")
    matches_tables: bool = Field(description="whether the run's tables still hash to tables_sha256")


class Verdict(_Record):
    """One model version's standing, for promotion jobs and inventories."""

    model_config = ConfigDict(
        title=f"interp-audit verdict, schema version {SCHEMA_VERSION}",
        json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema"},
    )

    schema_version: int = SCHEMA_VERSION
    model: str
    version: str
    cleared: bool
    reason: str = Field(description="one line: why it is cleared, or what stands in the way")
    requirement: Requirement
    run: AuditRun = Field(description="the version's latest published audit")
    gates: list[GateValue]
    contract_failures: list[ContractFailure]
    reviews: list[Review] = Field(description="the run's reviews, oldest first; the latest one stands")
    tables_sha256: str = Field(description="SHA-256 over the run's published table files now")
    approval_matches_tables: bool | None = Field(
        description="whether the standing review is an approval of the current tables; null without reviews"
    )
    baseline: Baseline | None = Field(
        description="the earlier version's run the audit compared with (basis: approved or passed), if any"
    )
    diff_headline: str | None = Field(description="what changed against the baseline, in one line")


def verdict(store: str | Path | ReportStore, model: str, version: str, require: Requirement | None = None) -> Verdict:
    """The standing of ``model`` ``version`` from its latest published audit. ``require`` defaults to ``approved``
    when that audit's spec waits for a sign-off (``review.wait_for_sign_off``), else ``passed``.

    Raises NotFoundError for a model or version with no published run."""
    opened = store if isinstance(store, ReportStore) else ReportStore.open(store)
    run = _latest_run(opened, model, version)
    requirement = require or _required_by_spec(run["spec_text"])
    gates = _rows(opened, "gate_results", run["run_id"])
    contracts = _rows(opened, "contract_results", run["run_id"])
    recorded, current = review_state(opened, run)
    reviews = [Review(**_pick(row, Review)) for row in recorded.to_dict("records")]
    failures = [ContractFailure(**_pick(row, ContractFailure)) for row in contracts if not row["success"]]
    gate_values = [GateValue(**_pick(row, GateValue)) for row in gates]
    standing = reviews[-1] if reviews else None
    cleared, reason = _decide(run["status"], requirement, gate_values, failures, standing)
    baseline, diff_line = _baseline(opened, run["run_id"])
    return Verdict(
        model=model,
        version=version,
        cleared=cleared,
        reason=reason,
        requirement=requirement,
        run=AuditRun(**_pick(run, AuditRun)),
        gates=gate_values,
        contract_failures=failures,
        reviews=reviews,
        tables_sha256=current,
        approval_matches_tables=None
        if standing is None
        else standing.decision == "approved" and standing.matches_tables,
        baseline=baseline,
        diff_headline=diff_line,
    )


def _latest_run(store: ReportStore, model: str, version: str) -> dict:
    runs = store.runs(model).to_pylist()
    if not runs:
        known = sorted({row["model_name"] for row in store.runs().to_pylist()})
        raise NotFoundError(
            f"no published audit of model {model!r}; the store's models: {', '.join(known) or 'none yet'}"
        )
    of_version = [run for run in runs if run["model_version"] == version]
    if not of_version:
        versions = sorted({run["model_version"] for run in runs}, key=lambda v: (len(v), v))
        raise NotFoundError(
            f"no published audit of {model} version {version!r}; its audited versions: {', '.join(versions)}"
        )
    return of_version[-1]  # runs come oldest first


def _required_by_spec(spec_text: str) -> Requirement:
    review = (yaml.safe_load(spec_text) or {}).get("review") or {}
    return Requirement.approved if review.get("wait_for_sign_off") else Requirement.passed


def _rows(store: ReportStore, table: str, run_id: str) -> list[dict]:
    return store.read(table, run_id=run_id).to_pylist()


def _pick(row: dict, record: type[_Record]) -> dict:
    """The row's columns the record names; NaN (pandas' missing float) as None."""
    return {key: None if isinstance(row[key], float) and pd.isna(row[key]) else row[key] for key in record.model_fields}


def _decide(
    status: str,
    requirement: Requirement,
    gates: list[GateValue],
    failures: list[ContractFailure],
    standing: Review | None,
) -> tuple[bool, str]:
    if status == "failed_contracts":
        named = ", ".join(f"{f.table_name} {f.expectation}" + (f" on {f.column}" if f.column else "") for f in failures)
        return False, f"contracts failed: {named}"
    if status == "failed_gates":
        named = ", ".join(f"{g.gate} ({g.metric} = {_number(g.value)})" for g in gates if g.outcome == "failed")
        return False, f"failed gates: {named}"
    if requirement is Requirement.passed:
        return True, "the latest audit passed (no sign-off required)"
    if standing is None:
        return False, "awaiting review: the latest audit passed, nobody has signed it off (interp-audit review)"
    when = f"{standing.reviewed_at:%Y-%m-%d %H:%M} UTC"
    if standing.decision == "rejected":
        because = f": {standing.comment}" if standing.comment else ""
        return False, f"rejected by {standing.reviewer} at {when}{because}"
    if not standing.matches_tables:
        return False, f"tables changed since the approval by {standing.reviewer} at {when}"
    return True, f"the latest audit passed and {standing.reviewer} approved its tables at {when}"


def _number(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.3g}"


def _baseline(store: ReportStore, run_id: str) -> tuple[Baseline | None, str | None]:
    """The baseline the audit itself compared with (not one asked for later with ``report diff``)."""
    diffs = store.read("version_diffs", run_id=run_id).to_pandas()
    own = [summary for summary in summarize(diffs) if summary["basis"] != "requested"]
    if not own:
        return None, None
    first = own[0]
    return Baseline(first["run_id"], first["version"], first["basis"]), headline(first) or None


def schema_json() -> str:
    return json.dumps(Verdict.model_json_schema(), indent=2) + "\n"


if __name__ == "__main__":
    SCHEMA_PATH.write_text(schema_json())
    print(f"wrote {SCHEMA_PATH}")
