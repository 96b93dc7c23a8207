"""``interp-audit report``: read published reports (list, show, html, diff, query, card); never starts Prefect."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Column, Table

from flows.cli.options import (
    DEFAULT_STORE,
    DocumentFormat,
    ReadStoreOpt,
    RunIdArg,
    TableFormat,
    existing_store,
    exits,
    print_json,
)
from flows.cli.shown_tables import METHODS, PARITY, ShownTable
from interp_audit.progress import console

report_app = typer.Typer(help="Read published reports: list, show, diff, html, query, card.", no_args_is_help=True)

TableFormatOpt = Annotated[TableFormat, typer.Option("--format", help="table, or json / csv for programs.")]


def output_file_option(help: str):
    """``-o/--output FILE``, a file (not a folder) the command writes; None: the command's default name."""
    return Annotated[Path | None, typer.Option("-o", "--output", help=help, dir_okay=False, show_default=False)]


HtmlFileOpt = output_file_option("HTML file to write (default: <run id>.html in the current folder).")
CardFileOpt = output_file_option(
    "Markdown file to write, in a folder that exists (default: <model>-v<version>-card.md here)."
)
DocumentFormatOpt = Annotated[
    DocumentFormat, typer.Option("--format", help="table, or json for programs (keys: docs/tables.md).")
]


@report_app.command("list")
@exits
def report_list(
    store: ReadStoreOpt = DEFAULT_STORE,
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    version: Annotated[str | None, typer.Option(help="Only this version.")] = None,
    output: TableFormatOpt = TableFormat.table,
) -> None:
    """List published runs, oldest first. JSON and CSV give every audit_runs column but spec_text."""
    from interp_audit.report import list_runs

    runs = list_runs(existing_store(store), model, version)
    if output is not TableFormat.table:
        print_rows(runs.drop(columns="spec_text"), output)
        return
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
    run_id: RunIdArg,
    store: ReadStoreOpt = DEFAULT_STORE,
    output: DocumentFormatOpt = DocumentFormat.table,
) -> None:
    """A summary of one run: provenance, parity, contracts, gates, the diff with its baseline, sign-offs, tables."""
    import pandas as pd

    from interp_audit.diff import headline, records, summarize
    from interp_audit.report import find_run, load_table, review_state

    opened = existing_store(store)
    run_row = find_run(opened, run_id)
    if output is DocumentFormat.json:
        print_json(run_document(opened, run_row))
        _warn_foreign(opened)
        return
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
    _print_shown(PARITY, opened, run_row["run_id"])
    results = load_table(opened, "contract_results", run_id=run_row["run_id"])
    failed = results[~results["success"]]
    console.print(f"contracts: {len(results) - len(failed)}/{len(results)} expectations met")
    for row in failed.itertuples():
        console.print(
            f"  [red]failed[/] {row.table_name}: {row.expectation} on {row.column}: observed {row.observed_value}",
            markup=True,
        )
    for shown in METHODS:
        _print_shown(shown, opened, run_row["run_id"])
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


SHOWN_TABLES = (
    "onnx_parity",
    "contract_results",
    "dissection_summary",
    "ablation_results",
    "tcav_scores",
    "probe_results",
    "sanity_checks",
    "gate_results",
    "version_diffs",
)


def _print_shown(shown: ShownTable, opened, run_id: str) -> None:
    from interp_audit.report import load_table

    table = shown.render(load_table(opened, shown.source, run_id=run_id))
    if table is not None:
        console.print(table)


def run_document(opened, run_row: dict) -> dict:
    """What ``report show --format json`` prints: the run's audit_runs row, the rows of the tables the text shows
    (keys: their columns), its reviews (each with ``matches_tables``), its tables hash and rows per table."""
    from interp_audit.report import review_state

    run_id = run_row["run_id"]
    reviews, current = review_state(opened, run_row)
    return {
        "run": run_row,
        **{name: opened.read(name, run_id=run_id).to_pylist() for name in SHOWN_TABLES},
        "reviews": reviews.to_dict("records"),
        "tables_sha256": current,
        "table_rows": {name: opened.read(name, run_id=run_id).num_rows for name in opened.tables_with_data()},
    }


def print_rows(rows, output: TableFormat) -> None:
    """A DataFrame's rows as JSON records (ISO times, NaN as null) or CSV, on stdout."""
    if output is TableFormat.csv:
        typer.echo(rows.to_csv(index=False), nl=False)
    else:
        print_json(rows.to_dict("records"))


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
    run_id: RunIdArg,
    store: ReadStoreOpt = DEFAULT_STORE,
    output: HtmlFileOpt = None,
) -> None:
    """One self-contained HTML page of a run for review: no scripts or external files, images inline."""
    from interp_audit.html_report import write_html
    from interp_audit.report import find_run

    opened = existing_store(store)
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
    output: DocumentFormatOpt = DocumentFormat.table,
) -> None:
    """What changed between two versions (their latest runs whose contracts held): LIME agreement per sample,
    detectors gained and lost per concept, render-ratio changes per unit, ablation drops per class. Written to
    version_diffs once per pair."""
    from interp_audit.diff import headline, summarize
    from interp_audit.report import diff_versions

    rows = diff_versions(existing_store(store), model, old_version, new_version)
    (diff,) = summarize(rows)
    if output is DocumentFormat.json:
        print_json(
            {
                "model": model,
                "old_version": old_version,
                "new_version": new_version,
                "headline": headline(diff),
                "version_diffs": rows.to_dict("records"),
            }
        )
        return
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
    if diff["ablation"]:
        table = Table("layer", "class, K", "drop before", "drop after", title="unit ablation, largest changes")
        for row in sorted(diff["ablation"]["classes"], key=lambda row: -abs(row["value"]))[:limit]:
            table.add_row(row["layer"], row["item"], f"{row['old_value']:.2f}", f"{row['new_value']:.2f}")
        console.print(table)
    if diff["probes"]:
        table = Table("layer", "attribute", "selectivity before", "after", title="probes, largest changes")
        for row in sorted(diff["probes"], key=lambda row: -abs(row["value"]))[:limit]:
            table.add_row(row["layer"], row["item"], f"{row['old_value']:.2f}", f"{row['new_value']:.2f}")
        console.print(table)
    if diff["tcav"]:
        table = Table("layer", "concept -> class", "score before", "score after", title="TCAV, largest changes")
        for row in sorted(diff["tcav"], key=lambda row: -abs(row["value"]))[:limit]:
            table.add_row(row["layer"], row["item"], f"{row['old_value']:.2f}", f"{row['new_value']:.2f}")
        console.print(table)


@report_app.command("query")
@exits
def report_query(
    sql: Annotated[str, typer.Argument(help="One DuckDB SELECT; every table is a view of published runs.")],
    store: ReadStoreOpt = DEFAULT_STORE,
    output: TableFormatOpt = TableFormat.table,
) -> None:
    """Query the report tables with one read-only DuckDB SELECT, e.g. "SELECT model, version, status FROM
    audit_runs". Nothing outside the store's published tables can be read or written (exit 2 if tried)."""
    from interp_audit.report import query

    result = query(existing_store(store), sql).to_pandas()
    if output is not TableFormat.table:
        print_rows(result, output)
    else:
        table = Table(*map(str, result.columns))
        for row in result.itertuples(index=False):
            table.add_row(*(str(value) for value in row))
        console.print(table)


@report_app.command("card")
@exits
def report_card(
    run_id: RunIdArg,
    store: ReadStoreOpt = DEFAULT_STORE,
    output: CardFileOpt = None,
) -> None:
    """The model card of a run (Hugging Face conventions: YAML metadata, then model details, intended use and
    limitations from the spec's card: block, evaluation, interpretability findings, the version diff, sign-offs,
    reproducibility), written from its published tables. Approving a run stores its card in model_cards too."""
    from interp_audit.model_card import write_model_card

    path = write_model_card(existing_store(store), run_id, output)
    console.print(f"wrote {path}", markup=False)
