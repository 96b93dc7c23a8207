"""What ``dissect`` returns per layer, and the error it raises on bad input."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class DissectionError(ValueError):
    """Bad dissection input; the message names the field and the fix."""


@dataclass
class DissectionResult:
    """One layer's dissection; ``iou`` columns follow ``label_ids`` (ascending, 0 excluded)."""

    layer: str
    thresholds: np.ndarray  # (U,) float64 per-unit activation threshold T_u
    iou: np.ndarray  # (U, L) float64
    label_ids: np.ndarray  # (L,) int64
    best_label: np.ndarray  # (U,) int64 label id of max IoU (the first such label on ties)
    best_iou: np.ndarray  # (U,) float64


# Pickled results (Prefect's result storage) and task cache keys record a class by its module: keep the module
# that callers import from, as before the package was split.
DissectionError.__module__ = DissectionResult.__module__ = "interp_ops.dissection"
