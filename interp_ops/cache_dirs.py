"""Where interp-audit keeps its file caches on this machine: ``$XDG_CACHE_HOME/interp-audit/<kind>``, or
``~/.cache/interp-audit/<kind>`` when XDG_CACHE_HOME is not set. One root for every cache, so that one folder
holds (and clears) them all."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(kind: str) -> Path:
    """The folder of the ``kind`` cache (e.g. "concepts"); not created here."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "interp-audit" / kind
