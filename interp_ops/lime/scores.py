"""How far an explanation can be trusted: the surrogate's fit, its stability across seeds, its faithfulness.

R^2 of the surrogate on its own rows (in sample) and on rows it never saw (held out), the Jaccard agreement of
its top-k features across seeds (stability), the deletion/insertion curves: the model's probability as
features are removed (or added) in the explanation's order, whose areas say whether that order is the one
the model actually depends on; and the faithfulness correlation (Bhatt et al. 2020): whether the weights of
random feature subsets predict how much hiding them moves the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np

# Deletion/insertion curves are sampled at up to this many points (every feature when there are fewer):
# every point costs one forward pass per label, and on the demo CNN (32-80 segments) 21 points move the AUC by
# 0.004 on average (0.02 at most) from the every-feature curve.
CURVE_POINTS = 21


def weighted_r2(Y: np.ndarray, predicted: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted R^2 per column, with sklearn.metrics.r2_score's conventions for constant targets."""
    mean = weights @ Y / weights.sum()
    residual = weights @ (Y - predicted) ** 2
    spread = weights @ (Y - mean) ** 2
    safe_spread = np.where(spread == 0, 1.0, spread)
    return np.where(spread == 0, np.where(residual == 0, 1.0, 0.0), 1.0 - residual / safe_spread)


def attribution_order(coef: np.ndarray) -> np.ndarray:
    """Feature indices per label, most positive weight first; ties keep the lower index first."""
    return np.argsort(-coef, axis=1, kind="stable")


def top_k_jaccard(top_sets: np.ndarray) -> float:
    """Mean pairwise Jaccard similarity of the top-k sets (runs, k) from different seeds."""
    scores = [len(np.intersect1d(a, b)) / len(np.union1d(a, b)) for a, b in combinations(top_sets, 2)]
    return float(np.mean(scores))


def top_k_stability(coefs: Sequence[np.ndarray], top_k: int) -> np.ndarray:
    """Per label, the top_k_jaccard of the surrogates one sample got from different seeds (coef (L, d) each)."""
    k = min(top_k, coefs[0].shape[1])
    tops = np.stack([attribution_order(coef)[:, :k] for coef in coefs], axis=1)  # (L, seeds, k)
    return np.array([top_k_jaccard(label_tops) for label_tops in tops])


def curve_steps(num_features: int, points: int = CURVE_POINTS) -> np.ndarray:
    """How many features are removed/added at each point of a curve: 0..d, at most `points` evenly spread."""
    return np.unique(np.round(np.linspace(0, num_features, min(num_features + 1, points))).astype(int))


def deletion_insertion_masks(order: np.ndarray) -> np.ndarray:
    """(L, 2, points, d) masks: point j of deletion has the first steps[j] features off, of insertion only those on."""
    num_features = order.shape[1]
    position = np.argsort(order, axis=1)  # position[l, f]: where feature f comes in label l's order
    steps = curve_steps(num_features)[:, None]
    inserted = position[:, None, :] < steps[None]  # (L, points, d)
    return np.stack([~inserted, inserted], axis=1)


def curve_auc(curves: np.ndarray, fractions: np.ndarray | None = None) -> np.ndarray:
    """Area under probability curves over the fraction of features removed/added (0..1), per curve.

    Without `fractions`, the points are taken as evenly spaced from 0 to 1.
    """
    fractions = np.linspace(0.0, 1.0, curves.shape[-1]) if fractions is None else fractions
    return np.trapezoid(curves, fractions, axis=-1)


def deletion_insertion_auc(
    probabilities: np.ndarray, masks: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion AUC per label, from the model's probabilities (L * 2 * points, K) on the rows of
    deletion_insertion_masks' masks (L, 2, points, d), in their order; each label's curve follows that label."""
    curves = probabilities.reshape(*masks.shape[:3], -1)  # (L, 2, points, K)
    fractions = curve_steps(masks.shape[-1]) / masks.shape[-1]
    auc = curve_auc(np.take_along_axis(curves, labels[:, None, None, None], axis=3)[..., 0], fractions)
    return auc[:, 0], auc[:, 1]


def faithfulness_subset_size(num_features: int, fraction: float) -> int:
    """Features hidden per faithfulness run: round(fraction * d), at least 1 and at most d - 1, so every run
    hides something and (for d >= 2) leaves something shown (Quantus refuses a subset as large as the input)."""
    return max(1, min(round(fraction * num_features), num_features - 1))


def faithfulness_subsets(rng: np.random.Generator, num_features: int, subset_size: int, runs: int) -> np.ndarray:
    """(runs, subset_size) feature indices, each run's drawn uniformly without replacement."""
    return np.argsort(rng.random((runs, num_features)), axis=1)[:, :subset_size]


def subset_masks(subsets: np.ndarray, num_features: int) -> np.ndarray:
    """(runs, d) binary rows with each run's subset hidden (False) and every other feature shown."""
    masks = np.ones((len(subsets), num_features), dtype=bool)
    np.put_along_axis(masks, subsets, False, axis=1)
    return masks


def faithfulness_correlation(
    coef: np.ndarray, probability: np.ndarray, masked: np.ndarray, subsets: np.ndarray, labels: np.ndarray
) -> list[float | None]:
    """Per label, the Pearson correlation over runs of a subset's summed weights with the drop in the label's
    probability when it is hidden, as quantus.FaithfulnessCorrelation computes it: from the weights coef (L, d),
    the probabilities on the input (L,), the model's probabilities (runs, K) on the rows with each subset
    (runs, k) hidden, and the labels (L,). None where the drops or the sums are all equal: no correlation."""
    drops = probability[:, None] - masked[:, labels].T  # (L, runs)
    sums = coef[:, subsets].sum(axis=2)  # (L, runs)
    scores = []
    for drop, total in zip(drops, sums):
        if np.ptp(drop) == 0 or np.ptp(total) == 0:
            scores.append(None)
            continue
        drop, total = drop - drop.mean(), total - total.mean()
        correlation = (drop * total).sum() / np.sqrt((drop * drop).sum() * (total * total).sum())
        scores.append(float(np.clip(correlation, -1.0, 1.0)))
    return scores
