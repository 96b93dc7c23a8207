"""What the commands share: exit codes, the options they take, turning our errors into exit codes, and the store a
reading command names."""

from __future__ import annotations

import enum
import functools
import json
import math
import os
from datetime import date, datetime
from pathlib import Path
from typing import Annotated

import typer

from flows.runners import Runner
from interp_audit.errors import AuditError, SpecError
from interp_audit.progress import console

EXIT_PASSED, EXIT_FAILED, EXIT_INVALID, EXIT_RUNTIME = 0, 1, 2, 3
DEFAULT_STORE = os.environ.get("INTERP_AUDIT_STORE", "./reports")


class Device(str, enum.Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


DeviceOpt = Annotated[Device, typer.Option(help="Where the model runs; auto picks CUDA when present.")]

RunnerOpt = Annotated[
    Runner,
    typer.Option(
        envvar="INTERP_AUDIT_RUNNER",
        help="Where the audit's tasks run: thread (a thread pool in this process) or ray (a Ray cluster; "
        "README, 'On a cluster'). Only how: the spec, its hash and the tables stay the same.",
    ),
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        envvar="RAY_ADDRESS",
        help="With --runner ray: the cluster to join (host:6379, ray://host:10001, or auto for the one `ray start "
        "--head` started here); without it, a local Ray is started for the command and stopped with it.",
        show_default=False,
    ),
]
GpusPerTaskOpt = Annotated[
    float | None,
    typer.Option(
        "--gpus-per-task",
        min=0,
        help="With --runner ray: the GPUs each GPU-bound task (LIME batch, render batch, exemplar, dissection, "
        "predictions, parity) asks Ray for; a fraction shares a GPU. Default: 1 where the cluster has GPUs, else 0.",
        show_default=False,
    ),
]


class TableFormat(str, enum.Enum):
    """How a command that prints rows prints them: a table for people, JSON records or CSV for programs."""

    table = "table"
    json = "json"
    csv = "csv"


class DocumentFormat(str, enum.Enum):
    """How a command that prints one nested answer prints it: text for people, or JSON (docs/tables.md)."""

    table = "table"
    json = "json"


SpecArg = Annotated[Path, typer.Argument(help="Path to the audit spec YAML.", show_default=False)]
StoreOpt = Annotated[str | None, typer.Option("--store", help="Report store path or URI (default: the spec's).")]
RunIdArg = Annotated[str, typer.Argument(help="Run id (or a unique prefix).", show_default=False)]
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


def existing_store(store: str):
    """Reading commands name a store that must exist: a typo should not read as an empty store."""
    from interp_audit.store import ReportStore

    opened = ReportStore.open(store)
    if not opened.exists():
        raise SpecError(
            f"report store {store!r} does not exist; pass --store (or set INTERP_AUDIT_STORE) to "
            "the store the audits publish to"
        )
    return opened


def print_json(data) -> None:
    """``data`` as JSON on stdout (progress and warnings go to stderr): times in ISO 8601, NaN as null."""
    typer.echo(json.dumps(_plain(data), indent=2))


def _plain(value):
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, datetime | date):
        return None if value != value else value.isoformat()  # pandas' NaT is the one unequal to itself
    if hasattr(value, "item") and not isinstance(value, str):  # numpy scalars
        return _plain(value.item())
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
