"""Where interp-audit keeps its file caches on this machine: ``$XDG_CACHE_HOME/interp-audit/<kind>``, or
``~/.cache/interp-audit/<kind>`` when XDG_CACHE_HOME is not set. One root for every cache, so that one folder
holds (and clears) them all."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path


def cache_dir(kind: str) -> Path:
    """The folder of the ``kind`` cache (e.g. "concepts"); not created here."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "interp-audit" / kind


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """``write(partial)`` then a rename onto ``path``: readers in other processes see either no file, the old one
    or the complete new one, never a half-written file; a write that fails leaves nothing."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.partial")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
