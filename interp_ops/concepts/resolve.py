"""A concepts URI, ``builtin:concepts?...`` or a Broden folder, to the ConceptSet it names and to the fingerprint
that keys task caches on its content."""

from __future__ import annotations

import hashlib
from pathlib import Path

from interp_ops.concepts.broden import folder_fingerprint, load_concepts
from interp_ops.concepts.builtin import parse_builtin_uri
from interp_ops.concepts.cache import builtin_concepts_dir, generator_key
from interp_ops.concepts.concept_set import ConceptSet


def resolve_concepts(
    uri: str, base_dir: Path | None = None, seed: int = 0, cache_dir: Path | None = None, filesystem=None
) -> ConceptSet:
    """A ConceptSet for ``builtin:concepts?n=&size=&seed=`` (seed defaults to ``seed``) or any Broden folder."""
    if str(uri).startswith("builtin:"):
        return load_concepts(str(builtin_concepts_dir(str(uri), seed, cache_dir)))
    return load_concepts(uri, base_dir, filesystem)


def concepts_fingerprint(uri: str, base_dir: Path | None = None, seed: int = 0, filesystem=None) -> str:
    """sha256 usable as a cache key: builtins hash their parameters and generator code (``cache.generator_key``);
    folders hash the CSV files and every file's path and size under images/ (``broden.folder_fingerprint``)."""
    if str(uri).startswith("builtin:"):
        n, size, seed = parse_builtin_uri(str(uri), seed)
        return hashlib.sha256(generator_key(n, size, seed).encode()).hexdigest()
    return folder_fingerprint(uri, base_dir, filesystem)
