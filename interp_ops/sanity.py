"""Sanity checks of explanations (Adebayo et al. 2018, "Sanity checks for saliency maps"): explain copies of the model
whose weights are re-drawn, top layer first and one more layer at each step, and measure how similar the
explanations stay. An explanation that stays the same when the model has learned nothing explains nothing about it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from scipy.stats import spearmanr

Predict = Callable[[np.ndarray], np.ndarray]
Explainer = Callable[[Predict], list[np.ndarray]]
"""A model -> each sample's attribution weights (labels, features), everything but the model held fixed."""


def rank_similarity(original: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Per label (row of (labels, features)): the Spearman rank correlation of the two weight vectors; a constant
    vector ranks nothing and counts as 0."""
    return np.array(
        [
            0.0 if np.ptp(a) == 0 or np.ptp(b) == 0 else float(spearmanr(a, b).statistic)
            for a, b in zip(np.atleast_2d(original), np.atleast_2d(other), strict=True)
        ]
    )


def randomisation_similarity(
    explain: Explainer, original: Predict, randomised: Iterable[Predict]
) -> tuple[np.ndarray, np.ndarray]:
    """(steps, samples, labels) twice: the rank similarity of each sample's explanation under each randomised model
    to its explanation under the original, of the weights and of their absolute values (Adebayo et al. report both:
    a sign flip reverses the ranking but may keep what is important). ``randomised`` is read one model at a time,
    so a generator keeps one copy loaded at once."""
    reference = explain(original)
    signed, absolute = [], []
    for model in randomised:
        weights = explain(model)
        signed.append([rank_similarity(a, b) for a, b in zip(reference, weights, strict=True)])
        absolute.append([rank_similarity(np.abs(a), np.abs(b)) for a, b in zip(reference, weights, strict=True)])
    return np.array(signed), np.array(absolute)
