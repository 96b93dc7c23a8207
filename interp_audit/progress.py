"""Our progress lines on the console (stderr), in place of Prefect's INFO log stream."""

from __future__ import annotations

import time

from rich.console import Console

console = Console(stderr=True, highlight=False, soft_wrap=True)
_started = time.monotonic()


def step(message: str) -> None:
    console.print(f"[dim]{time.monotonic() - _started:6.1f}s[/] [green]•[/] {message}")
