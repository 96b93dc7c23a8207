"""The LIME loop every kind of data shares: perturb, predict in shared batches, fit the surrogates, score them.

Every random draw comes from a generator seeded by (seed, sample key: its index in the data set, by default),
so a sample's explanation does not depend on the batch size or on which other samples are in the call (the
faithfulness subsets from their own stream, (seed, key, FAITHFULNESS_STREAM), so asking for them leaves the LIME
draws as they were). All labels of a sample share its perturbations and one ridge solve.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from interp_ops.blas import one_blas_thread
from interp_ops.lime.batching import GivenRows, Predict, predict_in_batches
from interp_ops.lime.errors import LimeInputError
from interp_ops.lime.perturb import Perturbation
from interp_ops.lime.scores import (
    attribution_order,
    deletion_insertion_auc,
    deletion_insertion_masks,
    faithfulness_correlation,
    faithfulness_subset_size,
    faithfulness_subsets,
    subset_masks,
    top_k_stability,
)
from interp_ops.lime.surrogate import exponential_kernel, fit_surrogate

FAITHFULNESS_STREAM = 1  # third seed word of the faithfulness subsets' generator; the LIME draws use two words


@dataclass(frozen=True)
class LoopSettings:
    """The knobs of the shared loop, checked on construction so bad settings are refused before any work."""

    num_samples: int
    kernel_width: float
    top_k: int
    seed: int
    stability_seeds: int
    heldout_samples: int
    faithfulness_runs: int = 0
    faithfulness_subset: float = 0.25

    def __post_init__(self) -> None:
        problems = [
            (
                self.num_samples < 2,
                f"num_samples={self.num_samples} must be >= 2 (the first row is the unperturbed input); "
                "use the default 1000 or more",
            ),
            (
                not self.kernel_width > 0,
                f"kernel_width={self.kernel_width} must be > 0; use 0.25 for images or leave it None for tables",
            ),
            (self.top_k < 1, f"top_k={self.top_k} must be >= 1; give how many features to report, e.g. 5"),
            (self.seed < 0, f"seed={self.seed} must be >= 0"),
            (
                self.stability_seeds < 1,
                f"stability_seeds={self.stability_seeds} must be >= 1; use 1 to skip the stability score",
            ),
            (
                self.heldout_samples < 0,
                f"heldout_samples={self.heldout_samples} must be >= 0; use 0 to skip the held-out R^2",
            ),
            (
                self.faithfulness_runs < 0 or self.faithfulness_runs == 1,
                f"faithfulness_runs={self.faithfulness_runs} must be 0 (off) or >= 2 (a correlation needs two "
                "points); use e.g. 50",
            ),
            (
                not 0 < self.faithfulness_subset < 1,
                f"faithfulness_subset={self.faithfulness_subset} must be a fraction of the features in (0, 1), "
                "e.g. 0.25",
            ),
        ]
        for failed, message in problems:
            if failed:
                raise LimeInputError(message)


def check_batch_size(batch_size: int) -> int:
    """batch_size, refused when it is not a positive count of rows."""
    if batch_size < 1:
        raise LimeInputError(f"batch_size={batch_size} must be >= 1; e.g. 256 for small inputs")
    return batch_size


def _resolve_labels(labels: list[list[int]] | None, probabilities: np.ndarray) -> list[np.ndarray]:
    """One array of labels per sample; None means each sample's top-1 class."""
    num_samples, num_classes = probabilities.shape
    if labels is None:
        return [np.array([label]) for label in probabilities.argmax(axis=1)]
    if len(labels) != num_samples:
        raise LimeInputError(
            f"labels has {len(labels)} entries for {num_samples} samples; give one list per sample "
            "or None for each sample's top-1 class"
        )
    resolved = []
    for index, sample_labels in enumerate(labels):
        values = np.asarray(sample_labels, dtype=np.int64).reshape(-1)
        outside = values[(values < 0) | (values >= num_classes)]
        if len(values) == 0 or len(outside) or len(np.unique(values)) != len(values):
            raise LimeInputError(
                f"labels[{index}]={list(sample_labels)} must be distinct classes in "
                f"[0, {num_classes}) (the model has {num_classes} classes); pass None for the "
                "top-1 class"
            )
        resolved.append(values)
    return resolved


@dataclass(frozen=True)
class Fit:
    """Everything scored for one sample, one entry per label (arrays indexed like `labels`)."""

    labels: np.ndarray
    probability: np.ndarray
    coef: np.ndarray  # (L, d)
    intercept: np.ndarray
    r2_in_sample: np.ndarray
    r2_heldout: np.ndarray | None
    stability: np.ndarray | None
    deletion_auc: np.ndarray
    insertion_auc: np.ndarray
    faithfulness: list[float | None] | None  # None when not asked for; None entries where it is undefined


def _sample_keys(sample_keys: Sequence[int] | None, count: int) -> list[int]:
    keys = list(range(count)) if sample_keys is None else [int(key) for key in sample_keys]
    if len(keys) != count or min(keys, default=0) < 0:
        raise LimeInputError(
            f"sample_keys has {len(keys)} entries for {count} samples; give one "
            "non-negative integer per sample (e.g. its index in the data set)"
        )
    return keys


def _faithfulness_draws(settings: LoopSettings, keys: list[int], widths: list[int]) -> list[np.ndarray]:
    """Each sample's faithfulness subsets (runs, subset_size) over its `widths` features, from its own stream;
    none when faithfulness_runs is 0."""
    if not settings.faithfulness_runs:
        return []
    return [
        faithfulness_subsets(
            np.random.default_rng([settings.seed, key, FAITHFULNESS_STREAM]),
            width,
            faithfulness_subset_size(width, settings.faithfulness_subset),
            settings.faithfulness_runs,
        )
        for key, width in zip(keys, widths)
    ]


def explain_samples(
    predict: Predict,
    batch_size: int,
    perturbation: Perturbation,
    inputs: np.ndarray,
    labels: list[list[int]] | None,
    settings: LoopSettings,
    sample_keys: Sequence[int] | None,
) -> list[Fit]:
    """One Fit per sample of inputs (N, *input_shape): its surrogate, fitted on the first seed's
    neighbourhood, and its scores; the other stability_seeds - 1 seeds serve only the stability score. The
    deletion/insertion rows and the faithfulness subsets' rows go through the model in one pass."""
    num_samples, seed, stability_seeds = settings.num_samples, settings.seed, settings.stability_seeds
    input_shape = inputs.shape[1:]
    keys = _sample_keys(sample_keys, len(inputs))
    probabilities = predict_in_batches(predict, [GivenRows(inputs)], input_shape, batch_size)[0]
    labels = _resolve_labels(labels, probabilities)
    rows = num_samples + settings.heldout_samples
    runs = [
        [
            perturbation.neighbourhood(index, np.random.default_rng([seed + run, keys[index]]), rows)
            for index in range(len(inputs))
        ]
        for run in range(stability_seeds)
    ]
    predicted = predict_in_batches(predict, [hood.inputs for run in runs for hood in run], input_shape, batch_size)
    # One BLAS thread: these solves are tiny, and woken BLAS threads spin on the cores the model needs next.
    with one_blas_thread():
        surrogates = [
            [
                fit_surrogate(
                    hood.binary,
                    predicted[run * len(inputs) + index][:, labels[index]],
                    exponential_kernel(perturbation.distance(hood.binary), settings.kernel_width),
                    num_samples,
                )
                for index, hood in enumerate(hoods)
            ]
            for run, hoods in enumerate(runs)
        ]
    curve_masks = [deletion_insertion_masks(attribution_order(coef)) for coef, *_ in surrogates[0]]
    curve_inputs = [
        perturbation.masked(index, masks.reshape(-1, masks.shape[-1])) for index, masks in enumerate(curve_masks)
    ]
    widths = [coef.shape[1] for coef, *_ in surrogates[0]]
    subsets = _faithfulness_draws(settings, keys, widths)
    subset_inputs = [perturbation.masked(i, subset_masks(drawn, widths[i])) for i, drawn in enumerate(subsets)]
    masked_probabilities = predict_in_batches(predict, curve_inputs + subset_inputs, input_shape, batch_size)
    curves, subset_probabilities = masked_probabilities[: len(inputs)], masked_probabilities[len(inputs) :]
    fits = []
    for index, (coef, intercept, r2, r2_heldout) in enumerate(surrogates[0]):
        sample_labels = labels[index]
        stability = None
        if stability_seeds > 1:
            stability = top_k_stability([run[index][0] for run in surrogates], settings.top_k)
        deletion_auc, insertion_auc = deletion_insertion_auc(curves[index], curve_masks[index], sample_labels)
        faithfulness = None
        if subsets:
            faithfulness = faithfulness_correlation(
                coef, probabilities[index, sample_labels], subset_probabilities[index], subsets[index], sample_labels
            )
        fits.append(
            Fit(
                sample_labels,
                probabilities[index, sample_labels],
                coef,
                intercept,
                r2,
                r2_heldout,
                stability,
                deletion_auc=deletion_auc,
                insertion_auc=insertion_auc,
                faithfulness=faithfulness,
            )
        )
    return fits


@dataclass(frozen=True)
class FixedSurrogates:
    """An explainer with its samples, labels and perturbations fixed: called with a model's predictions, it returns
    each sample's surrogate coefficients (labels, features), so explanations of different models differ only by
    the model."""

    labels: list[np.ndarray]  # per sample, the labels explained
    hoods: list  # per sample, its Neighbourhood
    kernels: list[np.ndarray]
    input_shape: tuple[int, ...]
    num_samples: int
    batch_size: int

    def __call__(self, predict: Predict) -> list[np.ndarray]:
        predicted = predict_in_batches(predict, [hood.inputs for hood in self.hoods], self.input_shape, self.batch_size)
        with one_blas_thread():
            return [
                fit_surrogate(hood.binary, predicted[i][:, self.labels[i]], self.kernels[i], self.num_samples)[0]
                for i, hood in enumerate(self.hoods)
            ]


def fixed_surrogates(
    predict: Predict,
    batch_size: int,
    perturbation: Perturbation,
    inputs: np.ndarray,
    labels: list[list[int]] | None,
    settings: LoopSettings,
    sample_keys: Sequence[int] | None,
) -> FixedSurrogates:
    """The surrogates ``explain_samples`` fits (on the first seed's neighbourhoods, for the labels it resolves with
    ``predict``), as a function of the model: given ``predict`` they are exactly the weights ``explain_samples``
    reports; given another model's, that model's weights on the same perturbations, for the same labels."""
    keys = _sample_keys(sample_keys, len(inputs))
    input_shape = inputs.shape[1:]
    probabilities = predict_in_batches(predict, [GivenRows(inputs)], input_shape, batch_size)[0]
    rows = settings.num_samples + settings.heldout_samples  # the draws explain_samples makes, the same rows
    hoods = [
        perturbation.neighbourhood(index, np.random.default_rng([settings.seed, keys[index]]), rows)
        for index in range(len(inputs))
    ]
    return FixedSurrogates(
        labels=_resolve_labels(labels, probabilities),
        hoods=hoods,
        kernels=[exponential_kernel(perturbation.distance(hood.binary), settings.kernel_width) for hood in hoods],
        input_shape=input_shape,
        num_samples=settings.num_samples,
        batch_size=batch_size,
    )
