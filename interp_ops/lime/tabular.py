"""LIME on tables: each column is binned at its training quartiles, and a feature is on where a perturbed
row's value falls in the sample's bin."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from interp_ops.lime.batching import GivenRows, Predict
from interp_ops.lime.errors import LimeInputError
from interp_ops.lime.explain import LoopSettings, check_batch_size, explain_samples
from interp_ops.lime.perturb import Neighbourhood, euclidean_distance_to_all_on
from interp_ops.lime.tables import LimeResult, table_rows


@dataclass(frozen=True)
class QuartileBins:
    """lime's QuartileDiscretizer fitted on training data, padded to (D, B) arrays for vectorised sampling."""

    edges: list[np.ndarray]  # per feature: the distinct quartiles
    names: list[list[str]]  # per feature and bin, as lime names them
    frequencies: np.ndarray  # (D, B) share of training rows in each bin
    means: np.ndarray  # (D, B) per-bin mean, std, min and max of the training values
    stds: np.ndarray
    lows: np.ndarray
    highs: np.ndarray

    def bin_of(self, rows: np.ndarray) -> np.ndarray:
        """(n, D) bin index of each value: searchsorted on the edges, so a value on an edge joins the lower bin."""
        return np.stack([np.searchsorted(edges, rows[:, f]) for f, edges in enumerate(self.edges)], axis=1)

    def sample_bins(self, rng: np.random.Generator, rows: int) -> np.ndarray:
        """(rows, D) bins drawn with the training frequencies."""
        cumulative = np.cumsum(self.frequencies, axis=1)
        last_present = self.frequencies.shape[1] - 1 - np.argmax(self.frequencies[:, ::-1] > 0, axis=1)
        drawn = (rng.random((rows, len(self.edges)))[:, :, None] >= cumulative[None]).sum(axis=2)
        return np.minimum(drawn, last_present)

    def sample_values(self, rng: np.random.Generator, bins: np.ndarray) -> np.ndarray:
        """Values drawn from each bin's truncated normal (its training mean and std, cut at its bounds)."""
        from scipy.stats import truncnorm

        feature = np.arange(len(self.edges))[None, :]
        mean, std = self.means[feature, bins], self.stds[feature, bins]
        low, high = self.lows[feature, bins], self.highs[feature, bins]
        values = low.copy()
        spread = low != high
        values[spread] = truncnorm.rvs(
            (low[spread] - mean[spread]) / std[spread],
            (high[spread] - mean[spread]) / std[spread],
            loc=mean[spread],
            scale=std[spread],
            random_state=rng,
        )
        return values


def fit_quartile_bins(training_data: np.ndarray, feature_names: list[str]) -> QuartileBins:
    """Bin edges, names and per-bin statistics exactly as lime.discretize.QuartileDiscretizer computes them."""
    edges = [np.unique(np.percentile(column, [25, 50, 75])) for column in training_data.T]
    width = max(len(e) for e in edges) + 1
    tables = {key: np.zeros((len(edges), width)) for key in ("frequencies", "means", "stds", "lows", "highs")}
    names = []
    for f, (column, cuts) in enumerate(zip(training_data.T, edges)):
        name = feature_names[f]
        names.append(
            [f"{name} <= {cuts[0]:.2f}"]
            + [f"{a:.2f} < {name} <= {b:.2f}" for a, b in zip(cuts[:-1], cuts[1:])]
            + [f"{name} > {cuts[-1]:.2f}"]
        )
        bins = np.searchsorted(cuts, column)
        for b in range(len(cuts) + 1):
            members = column[bins == b]
            tables["frequencies"][f, b] = len(members) / len(column)
            tables["means"][f, b] = members.mean() if len(members) else 0.0
            tables["stds"][f, b] = (members.std() if len(members) else 0.0) + 1e-11
        tables["lows"][f, : len(cuts) + 1] = [column.min(), *cuts]
        tables["highs"][f, : len(cuts) + 1] = [*cuts, column.max()]
    return QuartileBins(edges, names, **tables)


@dataclass(frozen=True)
class BinnedRows:
    """The tabular Perturbation: rows as lime's tabular sampler sees them (the instances, their bins, and the
    training mean that hides a feature in the deletion/insertion curves)."""

    bins: QuartileBins
    rows: np.ndarray  # (N, D)
    instance_bins: np.ndarray  # (N, D)
    training_mean: np.ndarray  # (D,)

    def masked(self, index: int, masks: np.ndarray) -> GivenRows:
        return GivenRows(np.where(masks, self.rows[index], self.training_mean).astype(np.float32))

    def neighbourhood(self, index: int, rng: np.random.Generator, rows: int) -> Neighbourhood:
        """Bins drawn with training frequencies, values drawn inside them; row 0 is the instance itself."""
        bins = self.bins.sample_bins(rng, rows)
        values = self.bins.sample_values(rng, bins)
        values[0] = self.rows[index]
        binary = bins == self.instance_bins[index]
        binary[0] = True
        return Neighbourhood(binary, GivenRows(values.astype(np.float32)))

    def distance(self, binary: np.ndarray) -> np.ndarray:
        """Euclidean distance, as lime_tabular on its discretized rows."""
        return euclidean_distance_to_all_on(binary)


class TabularLime:
    """LIME on tables, as lime.lime_tabular.LimeTabularExplainer(discretize_continuous=True, 'quartile').

    Each feature is binned at its training quartiles; a perturbed row draws each feature's bin with the
    training frequencies and a value inside it, and the surrogate sees 1 where the bin is the instance's.
    Differences from the package, all deliberate: a bin whose training values are all equal yields that
    value (the package yields its z-score, 0, a bug); R^2 is kept per label; draws come from numpy's
    default_rng seeded per (seed, sample); every feature is a surrogate feature with no feature-selection
    pre-fit (the package's 'auto' forward selection with num_features <= 6 is a different, greedy model);
    deletion/insertion 'hide' a feature by setting it to its training mean. Columns rank by |weight|, as
    the package's as_list: a column that argues against the label matters as much as one that supports it.
    """

    def __init__(self, predict: Predict, training_data: np.ndarray, feature_names: list[str], batch_size: int = 256):
        training_data = np.asarray(training_data, dtype=np.float64)
        if training_data.ndim != 2 or len(feature_names) != training_data.shape[1] or len(training_data) < 2:
            raise LimeInputError(
                f"training_data has shape {training_data.shape} and {len(feature_names)} feature "
                "names; give (n >= 2, D) rows and D names"
            )
        self.predict = predict
        self.batch_size = check_batch_size(batch_size)
        self.feature_names = [str(name) for name in feature_names]
        self.bins = fit_quartile_bins(training_data, self.feature_names)
        self.training_mean = training_data.mean(axis=0)

    def attribute(
        self,
        rows: np.ndarray,
        labels: list[list[int]] | None = None,
        *,
        num_samples: int = 5000,
        kernel_width: float | None = None,
        top_k: int = 5,
        seed: int = 0,
        stability_seeds: int = 3,
        heldout_samples: int = 200,
        faithfulness_runs: int = 50,
        faithfulness_subset: float = 0.25,
        sample_keys: Sequence[int] | None = None,
    ) -> LimeResult:
        """Explain each row (N, D) for its labels; kernel_width None means lime's 0.75 * sqrt(D).
        faithfulness_runs random subsets of faithfulness_subset of the columns are set to their training mean
        for the faithfulness correlation (0 runs: skipped); each run is one more forward pass per row."""
        width = 0.75 * np.sqrt(len(self.feature_names)) if kernel_width is None else kernel_width
        settings = LoopSettings(
            num_samples, width, top_k, seed, stability_seeds, heldout_samples, faithfulness_runs, faithfulness_subset
        )
        rows = np.asarray(rows, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != len(self.feature_names):
            raise LimeInputError(
                f"rows have shape {rows.shape}; give (N, {len(self.feature_names)}) like training_data"
            )
        binned = BinnedRows(self.bins, rows, self.bins.bin_of(rows), self.training_mean)
        fits = explain_samples(
            self.predict, self.batch_size, binned, rows.astype(np.float32), labels, settings, sample_keys
        )
        return LimeResult(
            *table_rows(
                fits,
                [self.feature_names] * len(rows),
                settings,
                explanation_extra=lambda i, top: {},
                attribution_extra=lambda i, f: {"bin": self.bins.names[f][binned.instance_bins[i, f]]},
                by_magnitude=True,
            )
        )
