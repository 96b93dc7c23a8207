"""Our progress lines on the console (stderr), in place of Prefect's INFO log stream, and in the log of the run they
belong to (``also_log``), so that the Prefect UI shows them too."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from rich.console import Console
from rich.text import Text

# wide when not a terminal, so that logs and captured output keep whole ids and paths
console = Console(stderr=True, highlight=False, emoji=False, soft_wrap=True, width=None if sys.stderr.isatty() else 160)
_started = time.monotonic()
_log: Callable[[str], None] | None = None


def step(message: str) -> None:
    console.print(f"[dim]{time.monotonic() - _started:6.1f}s[/] [green]•[/] {message}")
    if _log is not None:
        _log(Text.from_markup(message).plain)


def also_log(log: Callable[[str], None]) -> None:
    """Also hand each progress line, as plain text, to ``log`` (which may drop it: flows/logs.py)."""
    global _log
    _log = log
