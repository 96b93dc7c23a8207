"""The ``interp-audit`` command line.

Exit codes: 0 passed, 1 failed contracts or gates, 2 invalid input, 3 runtime error. ``validate`` and ``report``
never start Prefect, so they answer in about a second.
"""

from __future__ import annotations

import enum
import functools
import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Column, Table

# Our progress lines replace Prefect's and MLflow's INFO streams on the console; set before anything imports
# them, and users can still override each one.
for _name, _value in (
    ("PREFECT_LOGGING_LEVEL", "WARNING"),
    ("PREFECT_SERVER_LOGGING_LEVEL", "WARNING"),
    ("PREFECT_SERVER_ANALYTICS_ENABLED", "False"),
    ("GX_ANALYTICS_ENABLED", "False"),
    ("MLFLOW_LOGGING_LEVEL", "WARNING"),
):
    os.environ.setdefault(_name, _value)

from interp_audit.errors import AuditError, SpecError  # noqa: E402
from interp_audit.progress import console  # noqa: E402

EXIT_PASSED, EXIT_FAILED, EXIT_INVALID, EXIT_RUNTIME = 0, 1, 2, 3
DEFAULT_STORE = os.environ.get("INTERP_AUDIT_STORE", "./reports")

app = typer.Typer(
    help="Declarative interpretability audits of PyTorch/ONNX models, run by Prefect.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
report_app = typer.Typer(help="Read published reports: list, show, diff, html, query.", no_args_is_help=True)
app.add_typer(report_app, name="report")
store_app = typer.Typer(
    help="Look after the report store: check its files, remove crash leftovers, record runs written before manifests.",
    no_args_is_help=True,
)
app.add_typer(store_app, name="store")


class Device(str, enum.Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class QueryFormat(str, enum.Enum):
    table = "table"
    csv = "csv"
    json = "json"


DeviceOpt = Annotated[Device, typer.Option(help="Where the model runs; auto picks CUDA when present.")]

SpecArg = Annotated[Path, typer.Argument(help="Path to the audit spec YAML.", show_default=False)]
StoreOpt = Annotated[str | None, typer.Option("--store", help="Report store path or URI (default: the spec's).")]
ReadStoreOpt = Annotated[str, typer.Option("--store", help="Report store path or URI.", envvar="INTERP_AUDIT_STORE")]


def exits(command):
    """Turn our errors into their exit codes with a readable message, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except typer.Exit:
            raise
        except AuditError as exc:
            label = "invalid input" if exc.exit_code == EXIT_INVALID else "error"
            for message in exc.messages:
                console.print(f"[bold red]{label}:[/] ", end="")
                console.print(message, markup=False)
            raise typer.Exit(exc.exit_code) from None
        except Exception as exc:  # a runtime failure: say what and where, exit 3
            console.print(f"[bold red]runtime error:[/] {type(exc).__name__}: ", end="")
            console.print(str(exc), markup=False)
            raise typer.Exit(EXIT_RUNTIME) from None

    return wrapper


@app.command()
@exits
def validate(spec: SpecArg, device: DeviceOpt = Device.auto) -> None:
    """Check a spec, its model, layers and data without running anything (exit 0 valid, 2 invalid)."""
    from interp_audit.preflight import preflight
    from interp_audit.spec import load_spec

    loaded = load_spec(spec)
    checked = preflight(loaded, device.value)
    model = loaded.spec.model
    console.print(
        f"[green]valid:[/] {loaded.spec.name}: {model.source} model {model.name} v{checked.model.version}, "
        f"{len(model.layers)} layer(s), {checked.num_samples} samples, device {checked.device}"
    )


@app.command()
@exits
def run(
    spec: SpecArg,
    store: StoreOpt = None,
    only: Annotated[str | None, typer.Option(help="Comma-separated methods to run, e.g. lime,activation_max.")] = None,
    device: DeviceOpt = Device.auto,
) -> None:
    """Run an audit as a Prefect flow and publish its report (exit 0 passed, 1 failed contracts or gates)."""
    selected = [name.strip() for name in only.split(",") if name.strip()] if only else None
    summary = _run_audit(spec, store, selected, device.value)
    raise typer.Exit(EXIT_PASSED if summary["status"] == "passed" else EXIT_FAILED)


def _run_audit(spec: Path, store: str | None, only: list[str] | None, device: str) -> dict:
    from interp_audit.preflight import preflight
    from interp_audit.spec import load_spec
    from interp_audit.store import ReportStore

    loaded = load_spec(spec)
    loaded.spec.selected_methods(only)
    _check_reviewer_can_reach(loaded.spec)
    if loaded.spec.model.source != "mlflow":  # a registry is read inside the flow, whose task retries it
        preflight(loaded, device, store)  # fail fast, before Prefect starts
    else:
        ReportStore.open(store or loaded.spec.report.store).check_usable()
    from flows.audit import audit
    from flows.prefect_api import prefect_api

    with prefect_api():
        summary = audit(spec_path=str(spec.resolve()), store=store, only=only, device=device)
    colour = "green" if summary["status"] == "passed" else "red"
    failed_gates = f" ({', '.join(summary['failed_gates'])})" if summary["failed_gates"] else ""
    console.print(
        f"run id: [bold]{summary['run_id']}[/]\nstatus: [{colour}]{summary['status']}[/]{escape(failed_gates)}"
        f"\nreport: {summary['store']}"
    )
    return summary


def _check_reviewer_can_reach(spec) -> None:
    """A run that waits for a sign-off must wait on a server a reviewer can reach, not the run's own ephemeral one."""
    from prefect.settings import PREFECT_API_URL

    if spec.review.wait_for_sign_off and not PREFECT_API_URL.value():
        raise SpecError(
            "review.wait_for_sign_off: the audit would wait on a temporary Prefect API no reviewer can "
            "reach; start a server (prefect server start) and set PREFECT_API_URL, or set "
            "wait_for_sign_off: false and sign off after the run"
        )


@app.command()
@exits
def schedule(spec: SpecArg, store: StoreOpt = None) -> None:
    """Serve the audit as a Prefect deployment on the spec's cron schedule (runs until stopped)."""
    from interp_audit.preflight import preflight
    from interp_audit.spec import load_spec

    loaded = load_spec(spec)
    if loaded.spec.schedule is None:
        raise SpecError(f"{spec}: no schedule block; add e.g. `schedule: {{cron: '0 3 * * *', timezone: UTC}}`")
    preflight(loaded)
    from flows.prefect_api import prefect_api
    from flows.schedule import serve_audit

    with prefect_api():
        serve_audit(loaded, spec.resolve(), store)


@app.command()
@exits
def watch(
    spec: SpecArg,
    store: StoreOpt = None,
    interval: Annotated[int, typer.Option(help="Seconds between looks at the registry.", min=5)] = 60,
) -> None:
    """Audit every new version of the spec's MLflow model once, and tag it with the verdict (runs until stopped).

    Serves two Prefect deployments: a watcher on an interval that emits an event per new version, and the
    audit, triggered by that event. Use a Prefect server that keeps running (PREFECT_API_URL); without one, a
    local server lives as long as this command.
    """
    from interp_audit.spec import load_spec

    loaded = load_spec(spec)
    if loaded.spec.model.source != "mlflow":
        raise SpecError(
            f"{spec}: model.source is {loaded.spec.model.source}; `watch` needs a registry model "
            "(model.source: mlflow, name, version)"
        )
    from flows.prefect_api import prefect_api
    from flows.registry import serve_watch

    with prefect_api():
        serve_watch(loaded, spec.resolve(), store, interval)


@app.command()
@exits
def demo(store: ReadStoreOpt = DEFAULT_STORE) -> None:
    """Train (or reuse) the two demo models; register the honest one as version 1 in a local MLflow registry, audit
    it through the registry watcher's trigger and approve it; then register the shortcut one as version 2, audit
    it against version 1 and write its HTML report, where the diff and the gates flag the shortcut."""
    from flows.demo import review_story
    from interp_audit.html_report import write_html
    from interp_ops.demo_models import ensure_demo_models

    root = Path(__file__).resolve().parent.parent
    models = ensure_demo_models(root / "demo-models")
    for variant, model in models.items():
        extra = (
            ""
            if model.val_accuracy_without_patch is None
            else f", {model.val_accuracy_without_patch:.3f} with the corner patch removed"
        )
        console.print(f"demo model {variant}: val accuracy {model.val_accuracy:.3f}{extra}")
    shortcut_run = review_story(models, store)
    report_list(store=store)
    report_show(shortcut_run["run_id"], store=store)
    html = write_html(
        store,
        shortcut_run["run_id"],
        Path(store) / f"{shortcut_run['model_name']}-v{shortcut_run['model_version']}.html",
    )
    console.print(f"\nthe review document of v{shortcut_run['model_version']}: {html.resolve()}", markup=False)
    console.print(
        f'query it:  interp-audit report query "SELECT model, version, avg(correct::INT) AS accuracy '
        f'FROM predictions GROUP BY ALL" --store {store}',
        markup=False,
    )


@app.command()
@exits
def review(
    run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")],
    reviewer: Annotated[str, typer.Option(help="Who signs.")],
    approve: Annotated[bool, typer.Option("--approve/--reject", help="The decision.")],
    comment: Annotated[str | None, typer.Option(help="Why.")] = None,
    store: ReadStoreOpt = DEFAULT_STORE,
) -> None:
    """Sign a run off (or reject it): appends a review bound to the SHA-256 of the run's published tables.

    An audit whose spec waits for a sign-off (review.wait_for_sign_off) and is paused on the Prefect server
    (PREFECT_API_URL) is resumed with the decision instead; it records the review and sets the registry alias
    on approval."""
    from flows.review import resume_if_waiting
    from interp_audit.report import find_run, review_run

    if not reviewer.strip():
        raise SpecError("--reviewer: give the name of the person signing")
    opened = _existing_store(store)
    full_id = find_run(opened, run_id)["run_id"]
    if resume_if_waiting(full_id, approve=approve, reviewer=reviewer, comment=comment):
        console.print(
            f"{'approved' if approve else 'rejected'} run {full_id} by {reviewer}: handed to its audit, "
            "which waited for this decision and records it",
            markup=False,
        )
        return
    row = review_run(opened, full_id, approve=approve, reviewer=reviewer, comment=comment)
    console.print(
        f"{row['decision']} run {row['run_id']} by {row['reviewer']}; tables sha256 {row['tables_sha256'][:16]}...",
        markup=False,
    )


@app.command("schema")
def spec_schema() -> None:
    """Print the JSON Schema of the audit spec."""
    from interp_audit.spec import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))


@report_app.command("list")
@exits
def report_list(
    store: ReadStoreOpt = DEFAULT_STORE,
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    version: Annotated[str | None, typer.Option(help="Only this version.")] = None,
) -> None:
    """List published runs, oldest first."""
    from interp_audit.report import list_runs

    runs = list_runs(_existing_store(store), model, version)
    table = Table("audit", "model", "version", "status", "started (UTC)", "samples")
    table.columns.insert(0, Column("run id", no_wrap=True))
    for run_row in runs.itertuples():
        table.add_row(
            run_row.run_id,
            run_row.audit_name,
            run_row.model_name,
            run_row.model_version,
            run_row.status,
            f"{run_row.started_at:%Y-%m-%d %H:%M:%S}",
            str(run_row.num_samples),
        )
    console.print(table if len(runs) else f"no published runs in {store}")


@report_app.command("show")
@exits
def report_show(
    run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")], store: ReadStoreOpt = DEFAULT_STORE
) -> None:
    """A summary of one run: provenance, parity, contracts, gates, the diff with its baseline, sign-offs, tables."""
    import pandas as pd

    from interp_audit.diff import headline, records, summarize
    from interp_audit.report import find_run, load_table, review_state

    opened = _existing_store(store)
    run_row = find_run(opened, run_id)
    colour = "green" if run_row["status"] == "passed" else "red"
    console.print(
        f"[bold]{run_row['audit_name']}[/]: {run_row['model_name']} v{run_row['model_version']} "
        f"([{colour}]{run_row['status']}[/])"
    )
    for key in (
        "run_id",
        "model_source",
        "weights_sha256",
        "onnx_sha256",
        "spec_sha256",
        "seed",
        "data_uri",
        "num_samples",
        "device",
        "started_at",
        "finished_at",
    ):
        console.print(f"  {key:15} {run_row[key]}", markup=False)
    console.print(f"  {'ort_providers':15} {', '.join(run_row['ort_providers'])}", markup=False)
    parity = load_table(opened, "onnx_parity", run_id=run_row["run_id"])
    if len(parity):
        table = Table("output", "shape", "max abs diff", "max rel diff", "argmax agreement", title="ONNX parity")
        for row in parity.itertuples():
            table.add_row(
                row.output,
                "x".join(map(str, row.shape)),
                f"{row.max_abs_diff:.2e}",
                f"{row.max_rel_diff:.2e}",
                f"{row.argmax_agreement:.3f}",
            )
        console.print(table)
    results = load_table(opened, "contract_results", run_id=run_row["run_id"])
    failed = results[~results["success"]]
    console.print(f"contracts: {len(results) - len(failed)}/{len(results)} expectations met")
    for row in failed.itertuples():
        console.print(
            f"  [red]failed[/] {row.table_name}: {row.expectation} on {row.column}: observed {row.observed_value}",
            markup=True,
        )
    summary = load_table(opened, "dissection_summary", run_id=run_row["run_id"])
    if len(summary):
        table = Table(
            "layer",
            "category",
            "detectors",
            "unique concepts",
            "beat the baseline",
            "baseline detectors",
            title="network dissection: detectors per category (random baseline)",
        )
        for row in summary.itertuples():
            table.add_row(
                row.layer,
                row.category,
                str(row.detectors),
                str(row.unique_concepts),
                *(
                    ("-" if pd.isna(value) else str(int(value)))
                    for value in (row.detectors_above_baseline, row.baseline_detectors)
                ),
            )
        console.print(table)
    gates = load_table(opened, "gate_results", run_id=run_row["run_id"])
    for row in gates.itertuples():
        colour = {"passed": "green", "failed": "red"}.get(row.outcome, "yellow")
        value = "-" if pd.isna(row.value) else f"{row.value:.3g}"
        console.print(
            f"gate {escape(row.gate)}: [{colour}]{row.outcome}[/] ({row.metric} = {value}; {escape(row.detail)})"
        )
    for diff in summarize(load_table(opened, "version_diffs", run_id=run_row["run_id"])):
        console.print(
            f"compared with v{diff['version']} ({diff['basis']} run {diff['run_id'][:8]}): {headline(diff)}",
            markup=False,
        )
    reviews, current = review_state(opened, run_row)
    for row in records(reviews):
        state = (
            "matches the current tables"
            if row["tables_sha256"] == current
            else "DOES NOT MATCH the current tables (changed since)"
        )
        console.print(
            f"review: {row['decision']} by {row['reviewer']} at {row['reviewed_at']:%Y-%m-%d %H:%M:%S} "
            f"UTC, {state}" + (f": {row['comment']}" if row["comment"] else ""),
            markup=False,
        )
    if reviews.empty:
        console.print("review: none yet (interp-audit review RUN --approve|--reject --reviewer NAME)", markup=False)
    counts = Table("table", "rows", title="tables (the files of the run's manifest)")
    for name in opened.tables_with_data():
        counts.add_row(name, str(len(load_table(opened, name, run_id=run_row["run_id"], as_arrow=True))))
    console.print(counts)
    _warn_foreign(opened)


def _warn_foreign(opened) -> None:
    """Files no run published are never shown as data, but a reviewer should know they are there."""
    foreign = opened.foreign_files()
    if foreign:
        shown = "\n".join(f"  {path}" for path in foreign[:10]) + (
            f"\n  ... {len(foreign) - 10} more" if len(foreign) > 10 else ""
        )
        console.print(
            f"[yellow]warning:[/] {len(foreign)} foreign file(s) in the store's table folders, published "
            f"by no run and not shown above (interp-audit store check):\n{escape(shown)}"
        )


@report_app.command("html")
@exits
def report_html(
    run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")],
    store: ReadStoreOpt = DEFAULT_STORE,
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            help="HTML file to write (default: <run id>.html in the current folder).",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
) -> None:
    """One self-contained HTML page of a run for review: no scripts or external files, images inline."""
    from interp_audit.html_report import write_html
    from interp_audit.report import find_run

    opened = _existing_store(store)
    run_row = find_run(opened, run_id)
    path = write_html(opened, run_row["run_id"], output or Path(f"{run_row['run_id']}.html"))
    size = path.stat().st_size
    console.print(
        f"wrote {path} ({size / 1e6:.2f} MB)" if size >= 1e5 else f"wrote {path} ({size / 1e3:.1f} kB)", markup=False
    )


@report_app.command("diff")
@exits
def report_diff(
    model: Annotated[str, typer.Argument(help="Model name.")],
    old_version: Annotated[str, typer.Argument(help="The earlier version (e.g. the one in production).")],
    new_version: Annotated[str, typer.Argument(help="The version to compare with it.")],
    store: ReadStoreOpt = DEFAULT_STORE,
    limit: Annotated[int, typer.Option(help="Rows shown per method (all are written).", min=1)] = 10,
) -> None:
    """What changed between two versions (their latest runs whose contracts held): LIME agreement per sample,
    detectors gained and lost per concept, render-ratio changes per unit. Written to version_diffs once per pair."""
    from interp_audit.diff import headline, summarize
    from interp_audit.report import diff_versions

    (diff,) = summarize(diff_versions(_existing_store(store), model, old_version, new_version))
    console.print(f"{model} v{old_version} -> v{new_version}: {headline(diff)}", markup=False)
    if diff["lime"]:
        table = Table("sample", "top-k Jaccard", "attribution shift", title="LIME, least agreement first")
        for row in sorted(diff["lime"]["samples"], key=lambda row: row["jaccard"])[:limit]:
            table.add_row(row["item"], f"{row['jaccard']:.2f}", f"{row['shift']:.2f}")
        console.print(table)
    if diff["dissection"] and diff["dissection"]["concepts"]:
        table = Table("layer", "category", "concept", "gained", "lost", title="dissection: detectors per concept")
        for row in sorted(diff["dissection"]["concepts"], key=lambda row: -row["lost"])[:limit]:
            table.add_row(row["layer"], row["category"], row["item"], f"{row['gained']:.0f}", f"{row['lost']:.0f}")
        console.print(table)
    if diff["actmax"] and diff["actmax"]["units"]:
        table = Table("layer", "unit", "ratio before", "ratio after", title="activation maximization, largest changes")
        for row in diff["actmax"]["units"][:limit]:
            table.add_row(row["layer"], row["item"], f"{row['old_value']:.2f}", f"{row['new_value']:.2f}")
        console.print(table)


@report_app.command("query")
@exits
def report_query(
    sql: Annotated[str, typer.Argument(help="One DuckDB SELECT; every table is a view of published runs.")],
    store: ReadStoreOpt = DEFAULT_STORE,
    output: Annotated[QueryFormat, typer.Option("--format", help="How to print the rows.")] = QueryFormat.table,
) -> None:
    """Query the report tables with one read-only DuckDB SELECT, e.g. "SELECT model, version, status FROM
    audit_runs". Nothing outside the store's published tables can be read or written (exit 2 if tried)."""
    from interp_audit.report import query

    result = query(_existing_store(store), sql).to_pandas()
    if output is QueryFormat.csv:
        typer.echo(result.to_csv(index=False), nl=False)
    elif output is QueryFormat.json:
        typer.echo(result.to_json(orient="records", date_format="iso"))
    else:
        table = Table(*map(str, result.columns))
        for row in result.itertuples(index=False):
            table.add_row(*(str(value) for value in row))
        console.print(table)


def _existing_store(store: str):
    """Reading commands name a store that must exist: a typo should not read as an empty store."""
    from interp_audit.store import ReportStore

    opened = ReportStore.open(store)
    if not opened.exists():
        raise SpecError(
            f"report store {store!r} does not exist; pass --store (or set INTERP_AUDIT_STORE) to "
            "the store the audits publish to"
        )
    return opened


@store_app.command("check")
@exits
def store_check(store: ReadStoreOpt = DEFAULT_STORE) -> None:
    """Verify every published file against its manifest and list what else is in the table folders: foreign
    files (put there by no run), crash leftovers (staging, orphans) and unreadable manifests.
    Exit 0 when every published file is intact and nothing foreign is there, 1 otherwise."""
    found = _existing_store(store).check()
    console.print(f"{found.published} published file(s) checked", markup=False)
    sections = (
        ("modified since published (a sign-off of their run no longer matches)", found.modified),
        ("missing (listed by a manifest, gone from the store)", found.missing),
        ("foreign (published by no run, never shown by the readers)", found.foreign),
        ("unreadable manifests", found.bad_manifests),
        (
            "unrecorded: files of complete runs and their reviews that no manifest lists, as stores written "
            "before manifests hold them; not shown until `interp-audit store adopt` records them",
            found.unrecorded,
        ),
        ("staging left by interrupted runs (interp-audit store gc removes them)", found.staging),
        ("orphans of runs that never finished publishing (interp-audit store gc removes them)", found.orphans),
    )
    for title, paths in sections:
        if paths:
            console.print(f"{len(paths)} {title}:", markup=False)
            for path in paths:
                console.print(f"  {path}", markup=False)
    if found.intact:
        console.print("[green]intact:[/] every published file matches its manifest; nothing foreign")
    raise typer.Exit(EXIT_PASSED if found.intact else EXIT_FAILED)


@store_app.command("adopt")
@exits
def store_adopt(store: ReadStoreOpt = DEFAULT_STORE) -> None:
    """Record with manifests the runs that are complete on disk but have none (a store written before
    manifests), with their reviews and requested diffs, so that the readers show them again. Files are hashed as
    they are now; nothing is moved or rewritten."""
    adopted = _existing_store(store).adopt()
    runs = [manifest for manifest in adopted if manifest.kind == "run"]
    for manifest in runs:
        records = sum(other.run_id == manifest.run_id and other.kind != "run" for other in adopted)
        console.print(
            f"recorded run {manifest.run_id} ({manifest.model} v{manifest.version}): "
            f"{len(manifest.files)} table file(s), {records} review(s) or diff(s)",
            markup=False,
        )
    if any(file.table == "reviews" for manifest in adopted for file in manifest.files):
        console.print(
            "note: sign-offs given before manifests hashed the files another way; `report show` says "
            "they do not match the current tables: review those runs again",
            markup=False,
        )
    console.print(
        f"{len(runs)} run(s) recorded" if runs else "nothing to record: every complete run has its manifest",
        markup=False,
    )


@store_app.command("gc")
@exits
def store_gc(
    store: ReadStoreOpt = DEFAULT_STORE,
    grace: Annotated[
        float,
        typer.Option(
            help="Minutes a leftover must be untouched before it is removed; a live run's files are younger.", min=0
        ),
    ] = 60.0,
) -> None:
    """Remove the staging folders and orphaned table files of runs that crashed (older than --grace minutes).
    Published, foreign and modified files are never removed."""
    removed = _existing_store(store).gc(grace * 60)
    for path in removed:
        console.print(f"removed {path}", markup=False)
    console.print(f"{len(removed)} leftover(s) removed" if removed else "nothing to remove", markup=False)


if __name__ == "__main__":
    app()
