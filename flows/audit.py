"""The ``audit`` flow: spec -> model intake -> ONNX bundle -> method tasks -> contracts -> report.

It reads like a table of contents: all computation is in ``interp_ops`` and all policy (caching, retries)
on the task decorators.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata

import pyarrow as pa
from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from rich.markup import escape

import data_contracts
from flows.methods import method_tables
from flows.review import wait_for_sign_off
from flows.runners import Runner, RunnerChoice, task_resources
from interp_audit import progress
from interp_audit.errors import AuditError
from interp_audit.inputs import data_sha256
from interp_audit.preflight import preflight
from interp_audit.report import diff_table
from interp_audit.spec import load_spec, with_model_version
from interp_ops.onnx_bundle import onnx_sha256
from tasks.contracts import validate_contracts
from tasks.gpu import ensure_gpu_limit, limit_malloc_arenas
from tasks.inference import ort_providers
from tasks.intake import export_onnx, load_model_inputs
from tasks.registry import fetch_registered_model, write_back
from tasks.report import publish_report
from tasks.review import check_gates, compare_with_baseline


class BadInputWithoutTraceback(logging.Filter):
    """Our errors (AuditError: bad input, or a failure whose message names the fix) are printed by the CLI as
    that message; Prefect's run loggers would add their traceback, which only shows where our code noticed them
    and buries the message. Their one-line records stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], AuditError):
            record.exc_info, record.exc_text = None, None
        return True


for _run_logger in ("prefect.task_runs", "prefect.flow_runs"):
    logging.getLogger(_run_logger).addFilter(BadInputWithoutTraceback())


PACKAGES = (
    "interp-audit",
    "torch",
    "onnx",
    "onnxruntime-gpu",
    "prefect",
    "great-expectations",
    "pyarrow",
    "pandas",
    "numpy",
)


def package_versions() -> str:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return json.dumps(versions, sort_keys=True)


def run_record(
    loaded, checked, onnx_bytes: bytes, num_samples: int, started: datetime, status: str, providers: list[str]
) -> dict:
    """The ``audit_runs`` row: everything needed to reproduce and trust the run."""
    spec = loaded.spec
    return {
        "audit_name": spec.name,
        "model_name": spec.model.name,
        "model_version": checked.model.version,
        "model_source": spec.model.source,
        "weights_sha256": checked.model.sha256
        if checked.model.source == "torch" or spec.model.source == "sklearn"
        else None,
        "onnx_sha256": onnx_sha256(onnx_bytes),
        "spec_sha256": loaded.sha256,
        "spec_text": loaded.text,
        "seed": spec.seed,
        "data_uri": spec.data,
        "num_samples": num_samples,
        "started_at": started,
        "finished_at": datetime.now(UTC),
        "status": status,
        "device": checked.device,
        "ort_providers": providers,
        "package_versions": package_versions(),
    }


@flow(name="interp-audit", log_prints=False, validate_parameters=True)
def audit(
    spec_path: str,
    store: str | None = None,
    only: list[str] | None = None,
    device: str = "auto",
    version: str | None = None,
) -> dict:
    """Run one audit spec end to end and publish its report; returns the run's summary.

    ``version`` pins a registry model (model.source: mlflow) to another version than the spec names.
    """
    limit_malloc_arenas()
    loaded, checked, store_uri = checked_spec(spec_path, store, device, version)
    spec, version, run_id = loaded.spec, checked.model.version, str(flow_run.get_id() or "")
    started = datetime.now(UTC)
    methods = spec.selected_methods(only)
    progress.step(f"audit [bold]{spec.name}[/] of {spec.model.name} v{version} on {checked.device}")

    data_key = data_sha256(spec.data, loaded.base_dir)
    inputs = load_model_inputs(spec.data, str(loaded.base_dir), data_key, spec.seed, spec.model.input)
    with task_resources(gpu=False):
        onnx_export = export_onnx.submit(
            checked.model, tuple(spec.model.input.shape), spec.model.layer_names, spec.model.token_grids
        )
    tables, onnx_bytes = method_tables(loaded, checked, inputs, onnx_export, methods, run_id, store_uri)
    diffs, baseline = compare_with_baseline(store_uri, spec.model.name, version, tables)
    if diffs:
        tables["version_diffs"] = data_contracts.conform("version_diffs", diff_table(run_id, baseline, diffs))
        progress.step(
            f"compared with v{baseline.version} ({baseline.basis} run {baseline.run_id[:8]}): "
            f"{len(diffs)} differences recorded"
        )
    verdict = judge(spec, tables, diffs, baseline)
    run_row = run_record(
        loaded, checked, onnx_bytes, len(inputs.ids), started, verdict.status, ort_providers(onnx_bytes, checked.device)
    )
    tables |= record_tables(run_id, run_row, verdict)
    location = publish_report(store_uri, run_id, spec.model.name, version, tables)
    return conclude(spec, store_uri, version, run_id, location, verdict)


@flow(name="interp-audit-on-runner", validate_parameters=True)
def audit_on_runner(
    spec_path: str,
    store: str | None = None,
    only: list[str] | None = None,
    device: str = "auto",
    version: str | None = None,
    runner: Runner = Runner.thread,
    ray_address: str | None = None,
    gpus_per_task: float | None = None,
) -> dict:
    """The audit as a deployment whose parameters choose its runner (deployments/prefect.yaml): a flow's task
    runner is fixed before it starts, so the audit runs as this flow's subflow, on the runner they name."""
    store_uri = store or load_spec(spec_path).spec.report.store
    return RunnerChoice(runner, ray_address, gpus_per_task).applied_to(audit, store_uri)(
        spec_path=spec_path, store=store, only=only, device=device, version=version
    )


def checked_spec(spec_path: str, store: str | None, device: str, version: str | None):
    """The spec (pinned to ``version``), its registry model fetched when it names one, checked by preflight."""
    loaded = load_spec(spec_path)
    if version is not None:
        loaded = with_model_version(loaded, version)
    store_uri = store or loaded.spec.report.store
    registered = (
        fetch_registered_model(loaded.spec.model, store_uri, str(loaded.base_dir))
        if loaded.spec.model.source == "mlflow"
        else None
    )
    checked = preflight(loaded, device, store_uri, registered)
    if checked.device.startswith("cuda"):
        ensure_gpu_limit()
    return loaded, checked, store_uri


@dataclass(frozen=True)
class Verdict:
    """The contracts' expectation results, the gates' outcomes and the run's status that follows from them."""

    results: list[dict]
    gates: list[dict]

    @property
    def failed_expectations(self) -> int:
        return sum(not row["success"] for row in self.results)

    @property
    def failed_gates(self) -> list[str]:
        return [gate["gate"] for gate in self.gates if gate["outcome"] == "failed"]

    @property
    def status(self) -> str:
        return "failed_contracts" if self.failed_expectations else "failed_gates" if self.failed_gates else "passed"


def judge(spec, tables: dict[str, pa.Table], diffs: list[dict], baseline) -> Verdict:
    """Validate every table against its contract, then evaluate the spec's gates on the run as a whole."""
    results = validate_contracts(tables, spec.contracts)
    progress.step(f"contracts: {sum(row['success'] for row in results)}/{len(results)} expectations met")
    gates = check_gates(spec.gates, tables, diffs, baseline) if spec.gates else []
    for gate in gates:
        value = "-" if gate["value"] is None else f"{gate['value']:.3g}"
        progress.step(f"gate {escape(gate['gate'])}: {gate['outcome']} ({value}; {escape(gate['detail'])})")
    return Verdict(results, gates)


def record_tables(run_id: str, run_row: dict, verdict: Verdict) -> dict[str, pa.Table]:
    """``audit_runs``, ``contract_results`` and ``gate_results``; our own bookkeeping tables must hold their
    contracts too (a failure is a bug, never published), and their checks are recorded with the rest."""
    rows = {"audit_runs": [run_row], "contract_results": verdict.results}
    if verdict.gates:
        rows["gate_results"] = verdict.gates
    tables = {name: data_contracts.run_table(name, run_id, table) for name, table in rows.items()}
    own = validate_contracts(tables, {})
    broken = [row for row in own if not row["success"]]
    if broken:
        raise AuditError([f"internal: {r['table_name']} breaks {r['expectation']} on {r['column']}" for r in broken])
    tables["contract_results"] = data_contracts.run_table("contract_results", run_id, verdict.results + own)
    return tables


def conclude(spec, store_uri: str, version: str, run_id: str, location: str, verdict: Verdict) -> dict:
    """Tag the registry version, leave the summary artifact, and wait for a sign-off where the spec asks for one."""
    waits = spec.review.wait_for_sign_off and verdict.status == "passed"
    if spec.model.source == "mlflow":
        write_back(spec.model, store_uri, version, verdict.status, run_id, location, alias_allowed=not waits)
    summary = {
        "run_id": run_id,
        "status": verdict.status,
        "store": location,
        "model": spec.model.name,
        "version": version,
        "failed_expectations": verdict.failed_expectations,
        "failed_gates": verdict.failed_gates,
        "review": None,
    }
    create_markdown_artifact(
        key=_artifact_key(spec.name),
        markdown=_summary_markdown(summary, verdict),
        description=f"interp-audit report of {spec.model.name} v{version}",
    )
    if waits:  # the report is published and summarised first: the reviewer reads it while the run waits
        summary["review"] = wait_for_sign_off(store_uri, run_id, spec.review.timeout_seconds)["decision"]
        if summary["review"] == "approved" and spec.model.source == "mlflow":
            write_back(spec.model, store_uri, version, verdict.status, run_id, location)
    return summary


def _artifact_key(name: str) -> str:
    return "interp-audit-" + re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")


def _summary_markdown(summary: dict, verdict: Verdict) -> str:
    lines = [
        f"# Audit of {summary['model']} v{summary['version']}: **{summary['status']}**",
        "",
        f"- run id: `{summary['run_id']}`",
        f"- report store: `{summary['store']}`",
        f"- expectations failed: {summary['failed_expectations']} of {len(verdict.results)}",
        *(f"- gate {g['gate']}: **{g['outcome']}** ({g['detail']})" for g in verdict.gates),
        "",
    ]
    failed = [row for row in verdict.results if not row["success"]]
    if failed:
        lines += ["| table | expectation | column | observed |", "|---|---|---|---|"]
        lines += [
            f"| {r['table_name']} | {r['expectation']} | {r['column'] or ''} | {r['observed_value'] or ''} |"
            for r in failed
        ]
    return "\n".join(lines)
