"""SHA-256 of a file, the digest that identifies a model file wherever one is recorded (model refs, registry
versions, the weights written by ``registry.log_model``). A leaf: it imports nothing of the project."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
