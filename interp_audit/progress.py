"""Our progress lines on the console (stderr), in place of Prefect's INFO log stream."""

from __future__ import annotations

import sys
import time

from rich.console import Console

# wide when not a terminal, so that logs and captured output keep whole ids and paths
console = Console(stderr=True, highlight=False, soft_wrap=True, width=None if sys.stderr.isatty() else 160)
_started = time.monotonic()


def step(message: str) -> None:
    console.print(f"[dim]{time.monotonic() - _started:6.1f}s[/] [green]•[/] {message}")
