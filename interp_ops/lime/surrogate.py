"""The local surrogate LIME fits: a ridge regression on the binary rows, weighted by an exponential kernel."""

from __future__ import annotations

import numpy as np

from interp_ops.lime.scores import weighted_r2


def exponential_kernel(distances: np.ndarray, width: float) -> np.ndarray:
    """lime's default kernel, sqrt(exp(-d^2 / width^2))."""
    return np.sqrt(np.exp(-(distances**2) / width**2))


def weighted_ridge(
    X: np.ndarray, Y: np.ndarray, weights: np.ndarray, alpha: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ridge with intercept and sample weights for several targets at once: coef (L, d), intercept (L,), R^2 (L,).

    The closed form of sklearn's Ridge(alpha, fit_intercept=True).fit(X, y, sample_weight) and its weighted
    score, which is the surrogate lime fits; one solve serves every label.
    """
    X, Y, weights = (np.asarray(a, dtype=np.float64) for a in (X, Y, weights))
    total = weights.sum()
    x_mean, y_mean = weights @ X / total, weights @ Y / total
    centered = X - x_mean
    weighted = centered * weights[:, None]
    gram = centered.T @ weighted + alpha * np.eye(X.shape[1])
    coef = np.linalg.solve(gram, weighted.T @ (Y - y_mean)).T
    intercept = y_mean - coef @ x_mean
    return coef, intercept, weighted_r2(Y, X @ coef.T + intercept, weights)


def fit_surrogate(
    binary: np.ndarray, targets: np.ndarray, weights: np.ndarray, num_samples: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """One sample's surrogate for all its labels: coef, intercept and R^2 of the weighted ridge on the first
    num_samples rows, and the weighted R^2 on the rows after them (None when there are none: no held-out rows).

    binary (rows, d), targets (rows, L): the model's probability of each label, weights (rows,).
    """
    binary = binary.astype(np.float64)
    coef, intercept, r2 = weighted_ridge(binary[:num_samples], targets[:num_samples], weights[:num_samples])
    heldout = slice(num_samples, None)
    r2_heldout = None
    if len(binary) > num_samples:
        r2_heldout = weighted_r2(targets[heldout], binary[heldout] @ coef.T + intercept, weights[heldout])
    return coef, intercept, r2, r2_heldout
