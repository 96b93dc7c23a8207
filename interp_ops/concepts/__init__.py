"""Concept data for network dissection: Broden-format folders and a generated one, as checked ConceptSets.

- ``broden``: reads and checks a Broden folder (index.csv, label.csv, category.csv, c_*.csv, images/) into a
  ``ConceptSet``: ``load_concepts``.
- ``concept_set``: the ConceptSet and its batches; images and masks are read lazily and checked when read.
- ``decode``: images and label masks from file bytes (label = R + 256*G).
- ``builtin``: ``builtin:concepts?n=...&size=...&seed=...``, synthetic scenes written as a Broden folder.
- ``cache``: this op keeps a file cache, the generated folders under ``~/.cache/interp-audit/concepts``.
- ``resolve``: a URI of either kind to its ConceptSet (``resolve_concepts``) and to a cache key
  (``concepts_fingerprint``).
"""

from interp_ops.concepts.broden import load_concepts
from interp_ops.concepts.builtin import BUILTIN_CATEGORIES, write_builtin_concepts
from interp_ops.concepts.cache import builtin_concepts_dir
from interp_ops.concepts.concept_set import MAX_MASK_LABEL, ConceptBatch, ConceptDataError, ConceptSet
from interp_ops.concepts.resolve import concepts_fingerprint, resolve_concepts

__all__ = [
    "BUILTIN_CATEGORIES",
    "MAX_MASK_LABEL",
    "ConceptBatch",
    "ConceptDataError",
    "ConceptSet",
    "builtin_concepts_dir",
    "concepts_fingerprint",
    "load_concepts",
    "resolve_concepts",
    "write_builtin_concepts",
]
