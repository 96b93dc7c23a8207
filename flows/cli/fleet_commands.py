"""``interp-audit fleet``: PostgreSQL, a Prefect server on it, a work pool and its workers on this machine (up, down,
status); flows/fleet.py does the work."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from flows.cli.options import exits
from interp_audit.progress import console

DEFAULT_STATE = Path(".interp-audit/fleet")
StateOpt = Annotated[
    Path, typer.Option(help="Folder of the fleet's database, logs and record of what runs (fleet.json).")
]

fleet_app = typer.Typer(
    help="Run the production shape on this machine: PostgreSQL, a Prefect server on it, a work pool and workers.",
    no_args_is_help=True,
)


@fleet_app.command("up")
@exits
def fleet_up(
    state: StateOpt = DEFAULT_STATE,
    workers: Annotated[int, typer.Option(help="Process workers polling the work pool.", min=1)] = 2,
    pool: Annotated[str, typer.Option(help="Name of the process work pool.")] = "interp-audit",
    pool_limit: Annotated[
        int | None, typer.Option(help="Audits the pool runs at once (default: one per worker).", min=1)
    ] = None,
    port: Annotated[int, typer.Option(help="Port of the Prefect server and its UI on 127.0.0.1.")] = 4200,
    postgres_port: Annotated[int, typer.Option(help="Port of the PostgreSQL started here, on 127.0.0.1.")] = 55432,
    database_url: Annotated[
        str | None,
        typer.Option(
            help="Use this PostgreSQL (postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DB) instead of starting one.",
            envvar="PREFECT_API_DATABASE_CONNECTION_URL",
        ),
    ] = None,
    watch: Annotated[
        list[Path] | None,
        typer.Option(
            help="A registry spec to watch (repeatable), instead of deployments/prefect.yaml's demo spec: its audit is "
            "deployed, and one watcher for all."
        ),
    ] = None,
    store: Annotated[str | None, typer.Option(help="Report store of the watched specs' audits.")] = None,
    interval: Annotated[
        int, typer.Option(help="Seconds between the --watch specs' watcher's looks at the registry.", min=5)
    ] = 60,
) -> None:
    """Start the fleet and print where each part runs; it keeps running until `interp-audit fleet down`.

    The first start creates PostgreSQL's data folder under --state (run as the `postgres` user when started by
    root). deployments/prefect.yaml's deployments are deployed to the pool (the demo registry spec's watcher and
    audit among them); with --watch, each spec's triggered audit, and one registry watcher for them all in place of
    the YAML's."""
    from flows.fleet import FleetSettings, up

    settings = FleetSettings(
        state=state,
        workers=workers,
        pool=pool,
        pool_limit=pool_limit,
        port=port,
        postgres_port=postgres_port,
        database_url=database_url,
        watch=tuple(watch or ()),
        store=store,
        interval=interval,
    )
    fleet = up(settings)
    table = Table("part", "pid", "address", "log", title=f"fleet in {fleet.state}")
    for process in fleet.processes:
        table.add_row(process.name, str(process.pid), process.address, process.log)
    console.print(table)
    console.print(f"Prefect API: {fleet.api_url}   database: {fleet.database}   work pool: {fleet.pool}", markup=False)
    console.print(f"stop it with: interp-audit fleet down --state {state}", markup=False)


@fleet_app.command("down")
@exits
def fleet_down(state: StateOpt = DEFAULT_STATE) -> None:
    """Stop exactly the processes `fleet up` started in --state (its data and logs stay)."""
    from flows.fleet import down

    stopped = down(state)
    console.print(f"stopped {', '.join(stopped)}" if stopped else f"no fleet runs from {state}", markup=False)


@fleet_app.command("restart")
@exits
def fleet_restart(
    part: Annotated[str, typer.Argument(help="postgres, prefect-server or a worker's name (see `fleet status`).")],
    state: StateOpt = DEFAULT_STATE,
) -> None:
    """Stop one part of the fleet and start it again the way `fleet up` did (same port, data and name); the rest,
    running audits included, carries on."""
    from flows.fleet import restart

    process = restart(state, part)
    console.print(f"{process.name} restarted: pid {process.pid}, log {process.log}", markup=False)


@fleet_app.command("status")
@exits
def fleet_status(state: StateOpt = DEFAULT_STATE) -> None:
    """List the fleet's processes and whether each still runs; exit 1 when one has stopped."""
    from flows.fleet import Fleet

    fleet = Fleet.read(state.resolve())
    if fleet is None:
        console.print(f"no fleet in {state}", markup=False)
        raise typer.Exit(1)
    running = {process.pid for process in fleet.running()}
    table = Table("part", "pid", "running", "address", "log", title=f"fleet in {fleet.state}")
    for process in fleet.processes:
        table.add_row(
            process.name, str(process.pid), "yes" if process.pid in running else "NO", process.address, process.log
        )
    console.print(table)
    if len(running) < len(fleet.processes):
        raise typer.Exit(1)
