"""The commands of the review story: sign a run off, and the demo that tells the story end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from flows.cli.options import (
    DEFAULT_STORE,
    EXIT_FAILED,
    DocumentFormat,
    ReadStoreOpt,
    RunIdArg,
    existing_store,
    exits,
    print_json,
)
from flows.cli.report_commands import report_list, report_show
from interp_audit.errors import SpecError
from interp_audit.progress import console
from interp_audit.verdict import Requirement


@exits
def demo(store: ReadStoreOpt = DEFAULT_STORE) -> None:
    """Train (or reuse) the two demo models; register the honest one as version 1 in a local MLflow registry, audit
    it through the registry watcher's trigger and approve it; then register the shortcut one as version 2, audit
    it against version 1 and write its HTML report, where the diff and the gates flag the shortcut."""
    from flows.demo import review_story
    from interp_audit.html_report import write_html
    from interp_ops.demo_models import ensure_demo_models

    root = Path(__file__).resolve().parents[2]
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


@exits
def review(
    run_id: RunIdArg,
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
    opened = existing_store(store)
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
    if approve:
        console.print(f"its model card is stored in model_cards: interp-audit report card {full_id[:8]}", markup=False)


@exits
def verdict(
    model: Annotated[str, typer.Argument(help="Model name, as the audits published it.")],
    version: Annotated[str, typer.Argument(help="The version to clear.")],
    require: Annotated[
        Requirement | None,
        typer.Option(
            help="passed: the latest audit passed; approved: and a reviewer approved its tables, unchanged since. "
            "Default: approved when the audit's spec waits for a sign-off, else passed.",
            show_default=False,
        ),
    ] = None,
    store: ReadStoreOpt = DEFAULT_STORE,
    output: Annotated[
        DocumentFormat, typer.Option("--format", help="table: one line; json: docs/verdict.schema.json.")
    ] = DocumentFormat.table,
) -> None:
    """Whether a model version is cleared for production by its latest audit: exit 0 cleared, 1 not cleared (the
    reason on one line: failed gates, failed contracts, awaiting review, rejected, tables changed since approval),
    2 an unknown model or version. For CI:  if interp-audit verdict MODEL VERSION; then promote; fi"""
    from interp_audit.verdict import verdict as read_verdict

    answer = read_verdict(existing_store(store), model, version, require)
    if output is DocumentFormat.json:
        print_json(answer.model_dump(mode="json"))
    else:
        colour = "green" if answer.cleared else "red"
        console.print(
            f"{model} v{version} [{colour}]{'cleared' if answer.cleared else 'NOT cleared'}[/] "
            f"(run {answer.run.run_id[:8]}): {escape(answer.reason)}"
        )
    if not answer.cleared:
        raise typer.Exit(EXIT_FAILED)
