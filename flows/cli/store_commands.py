"""``interp-audit store``: look after the report store (check, adopt, gc)."""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli.options import DEFAULT_STORE, EXIT_FAILED, EXIT_PASSED, ReadStoreOpt, existing_store, exits
from interp_audit.progress import console

store_app = typer.Typer(
    help="Look after the report store: check its files, remove crash leftovers, record runs written before manifests.",
    no_args_is_help=True,
)


@store_app.command("check")
@exits
def store_check(store: ReadStoreOpt = DEFAULT_STORE) -> None:
    """Verify every published file against its manifest and list what else is in the table folders: foreign
    files (put there by no run), crash leftovers (staging, orphans) and unreadable manifests.
    Exit 0 when every published file is intact and nothing foreign is there, 1 otherwise."""
    found = existing_store(store).check()
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
    adopted = existing_store(store).adopt()
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
    """Remove the staging folders and orphaned table files of runs that crashed, and the task-input blobs no run
    has put (each run puts its own as it starts), all untouched for --grace minutes: make it longer than an audit
    takes. Published, foreign and modified files are never removed."""
    removed = existing_store(store).gc(grace * 60)
    for path in removed:
        console.print(f"removed {path}", markup=False)
    console.print(f"{len(removed)} leftover(s) removed" if removed else "nothing to remove", markup=False)
