"""LIME (Ribeiro et al. 2016) for images and tables, with the semantics of the `lime` package, but fast and scored.

What the package does per perturbed row in Python happens here once per batch in numpy: masks are drawn as
one matrix, perturbed inputs are composed straight into the model's batch buffer, the batches mix rows of
several samples, and all labels of a sample share its perturbations and one ridge solve. Every random draw
comes from a generator seeded by (seed, sample key: its index in the data set, by default), so a sample's explanation does not depend on the
batch size or on which other samples are in the call. Each explanation is scored: in-sample and held-out
R^2 of the surrogate, its gap to the model, deletion/insertion AUC, and top-k stability across seeds.

Deliberate differences from the package are listed in the docstrings of ImageLime and TabularLime.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from itertools import combinations
from typing import Literal, Protocol

import numpy as np
from threadpoolctl import threadpool_limits

from interp_ops.images import label_map_png, png_bytes


class LimeInputError(ValueError):
    """A parameter or input LIME cannot work with; the message names it and the fix."""


Predict = Callable[[np.ndarray], np.ndarray]
"""Model-input batch (B, *input_shape) float32 -> class probabilities (B, K)."""

OVERLAY_DIM = 0.3  # brightness of the segments outside the top k in the overlay
OVERLAY_EDGE = (1.0, 0.85, 0.0)  # outline colour of the top-k segments
# Deletion/insertion curves are sampled at up to this many points (every feature when there are fewer):
# every point costs one forward pass per label, and on the demo CNN (32-80 segments) 21 points move the AUC by
# 0.004 on average (0.02 at most) from the every-feature curve.
CURVE_POINTS = 21


# ----------------------------------------------------------------------------------------------- surrogate


def weighted_r2(Y: np.ndarray, predicted: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted R^2 per column, with sklearn.metrics.r2_score's conventions for constant targets."""
    mean = weights @ Y / weights.sum()
    residual = weights @ (Y - predicted) ** 2
    spread = weights @ (Y - mean) ** 2
    safe_spread = np.where(spread == 0, 1.0, spread)
    return np.where(spread == 0, np.where(residual == 0, 1.0, 0.0), 1.0 - residual / safe_spread)


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


def exponential_kernel(distances: np.ndarray, width: float) -> np.ndarray:
    """lime's default kernel, sqrt(exp(-d^2 / width^2))."""
    return np.sqrt(np.exp(-(distances**2) / width**2))


def cosine_distance_to_all_on(masks: np.ndarray) -> np.ndarray:
    """Cosine distance of each binary row to the all-ones row: 1 - sqrt(on / d); an all-off row is at 1."""
    return 1.0 - np.sqrt(masks.sum(axis=1) / masks.shape[1])


def euclidean_distance_to_all_on(masks: np.ndarray) -> np.ndarray:
    """Euclidean distance of each binary row to the all-ones row: sqrt(number of off features)."""
    return np.sqrt(masks.shape[1] - masks.sum(axis=1))


def attribution_order(coef: np.ndarray) -> np.ndarray:
    """Feature indices per label, most positive weight first; ties keep the lower index first."""
    return np.argsort(-coef, axis=1, kind="stable")


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


def top_k_jaccard(top_sets: np.ndarray) -> float:
    """Mean pairwise Jaccard similarity of the top-k sets (runs, k) from different seeds."""
    scores = [
        len(np.intersect1d(a, b)) / len(np.union1d(a, b)) for a, b in combinations(top_sets, 2)
    ]
    return float(np.mean(scores))


# --------------------------------------------------------------------------------------- batched prediction


class _Rows(Protocol):
    """Model inputs for a block of rows, written on demand into the caller's batch buffer."""

    rows: int

    def compose(self, start: int, stop: int, out: np.ndarray) -> None: ...


@dataclass(frozen=True)
class _PixelRuns:
    """A segment map as runs of equal segment along the flat (row-major) pixel order.

    Superpixels are contiguous, so an image of 50k pixels has a few thousand runs: spreading a mask row to
    its pixels run by run is a fill, 2x faster than looking up every pixel's segment."""

    segment: np.ndarray  # (R,) the segment of each run, in 0..S-1
    length: np.ndarray  # (R,) pixels in each run

    @classmethod
    def of(cls, segment_of_pixel: np.ndarray) -> _PixelRuns:
        starts = np.flatnonzero(np.diff(segment_of_pixel, prepend=-1))
        return cls(segment_of_pixel[starts], np.diff(starts, append=len(segment_of_pixel)))


@dataclass(frozen=True)
class _MaskedImage:
    """Perturbed copies of one image: where a row's segment is off, its pixels take the fill value."""

    fill_bits: np.ndarray  # (C, P) int32 view of the model input with every segment hidden, P = H*W
    source_xor_fill: np.ndarray  # (C, P) int32: the bits that flip where a pixel is shown
    runs: _PixelRuns
    masks: np.ndarray  # (rows, S) bool

    @property
    def rows(self) -> int:
        return len(self.masks)

    def compose(self, start: int, stop: int, out: np.ndarray) -> None:
        """fill ^ (shown & (source ^ fill)) on the float bits: exact, and twice as fast as a masked copy."""
        run_bits = -self.masks[start:stop][:, self.runs.segment].astype(np.int32)  # True -> 0xFFFFFFFF
        pixel_bits = np.repeat(run_bits, self.runs.length, axis=1)[:, None, :]
        flat = out.reshape(stop - start, *self.fill_bits.shape).view(np.int32)
        np.bitwise_and(pixel_bits, self.source_xor_fill, out=flat)
        np.bitwise_xor(flat, self.fill_bits, out=flat)


@dataclass(frozen=True)
class _Given:
    """Rows that are already model inputs."""

    values: np.ndarray

    @property
    def rows(self) -> int:
        return len(self.values)

    def compose(self, start: int, stop: int, out: np.ndarray) -> None:
        out[...] = self.values[start:stop]


def predict_in_batches(
    predict: Predict, blocks: Sequence[_Rows], input_shape: tuple[int, ...], batch_size: int
) -> list[np.ndarray]:
    """Probabilities (rows, K) per block; batches of batch_size rows mix blocks, so no batch runs half empty."""
    total = sum(block.rows for block in blocks)
    buffer = np.empty((min(batch_size, max(total, 1)), *input_shape), dtype=np.float32)
    outputs: list[list[np.ndarray]] = [[] for _ in blocks]
    pending: list[tuple[int, int]] = []  # (block, rows) in the buffer, in order

    def flush() -> None:
        filled = sum(rows for _, rows in pending)
        probabilities = np.asarray(predict(buffer[:filled]), dtype=np.float64)
        if probabilities.ndim != 2 or len(probabilities) != filled:
            raise LimeInputError(
                f"predict returned shape {probabilities.shape} for {filled} inputs; it must return class "
                f"probabilities of shape ({filled}, K)"
            )
        for (block, rows), part in zip(pending, np.split(probabilities, np.cumsum([r for _, r in pending])[:-1])):
            outputs[block].append(part)
        pending.clear()

    filled = 0
    for index, block in enumerate(blocks):
        start = 0
        while start < block.rows:
            take = min(block.rows - start, len(buffer) - filled)
            block.compose(start, start + take, buffer[filled : filled + take])
            pending.append((index, take))
            filled, start = filled + take, start + take
            if filled == len(buffer):
                flush()
                filled = 0
    if pending:
        flush()
    return [np.concatenate(parts) for parts in outputs]


# ------------------------------------------------------------------------------------------ shared driver


def _check_settings(num_samples: int, kernel_width: float | None, top_k: int, seed: int,
                    stability_seeds: int, heldout_samples: int) -> None:
    problems = [
        (num_samples < 2, f"num_samples={num_samples} must be >= 2 (the first row is the unperturbed input); "
                          "use the default 1000 or more"),
        (kernel_width is not None and not kernel_width > 0,
         f"kernel_width={kernel_width} must be > 0; use 0.25 for images or leave it None for tables"),
        (top_k < 1, f"top_k={top_k} must be >= 1; give how many features to report, e.g. 5"),
        (seed < 0, f"seed={seed} must be >= 0"),
        (stability_seeds < 1, f"stability_seeds={stability_seeds} must be >= 1; use 1 to skip the stability score"),
        (heldout_samples < 0, f"heldout_samples={heldout_samples} must be >= 0; use 0 to skip the held-out R^2"),
    ]
    for failed, message in problems:
        if failed:
            raise LimeInputError(message)


def _resolve_labels(labels: list[list[int]] | None, probabilities: np.ndarray) -> list[np.ndarray]:
    """One array of labels per sample; None means each sample's top-1 class."""
    num_samples, num_classes = probabilities.shape
    if labels is None:
        return [np.array([label]) for label in probabilities.argmax(axis=1)]
    if len(labels) != num_samples:
        raise LimeInputError(f"labels has {len(labels)} entries for {num_samples} samples; give one list per sample "
                         "or None for each sample's top-1 class")
    resolved = []
    for index, sample_labels in enumerate(labels):
        values = np.asarray(sample_labels, dtype=np.int64).reshape(-1)
        outside = values[(values < 0) | (values >= num_classes)]
        if len(values) == 0 or len(outside) or len(np.unique(values)) != len(values):
            raise LimeInputError(f"labels[{index}]={list(sample_labels)} must be distinct classes in [0, {num_classes}) "
                             f"(the model has {num_classes} classes); pass None for the top-1 class")
        resolved.append(values)
    return resolved


@dataclass(frozen=True)
class _Neighbourhood:
    """A sample's perturbations: binary rows (fit rows first, row 0 all on, then held-out rows) and inputs."""

    binary: np.ndarray
    inputs: _Rows


@dataclass(frozen=True)
class _Fit:
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


def _surrogate(neighbourhood: _Neighbourhood, probabilities: np.ndarray, labels: np.ndarray, num_samples: int,
               distance: Callable[[np.ndarray], np.ndarray], kernel_width: float):
    """Weighted ridge on the fit rows; weighted R^2 on the held-out rows (None without them)."""
    binary = neighbourhood.binary.astype(np.float64)
    weights = exponential_kernel(distance(neighbourhood.binary), kernel_width)
    targets = probabilities[:, labels]
    coef, intercept, r2 = weighted_ridge(binary[:num_samples], targets[:num_samples], weights[:num_samples])
    heldout = slice(num_samples, None)
    r2_heldout = None
    if len(binary) > num_samples:
        r2_heldout = weighted_r2(targets[heldout], binary[heldout] @ coef.T + intercept, weights[heldout])
    return coef, intercept, r2, r2_heldout


class _Perturber(Protocol):
    """How one kind of input is perturbed: random neighbourhoods for the fit, chosen masks for the curves."""

    def neighbourhood(self, index: int, rng: np.random.Generator, rows: int) -> _Neighbourhood: ...

    def masked(self, index: int, masks: np.ndarray) -> _Rows: ...


def _check_batch_size(batch_size: int) -> int:
    if batch_size < 1:
        raise LimeInputError(f"batch_size={batch_size} must be >= 1; e.g. 256 for small inputs")
    return batch_size


def _fit_all(predict: Predict, batch_size: int, perturber: _Perturber, inputs: np.ndarray, labels, *,
             sample_keys: Sequence[int] | None,
             num_samples: int, distance, kernel_width: float, top_k: int, seed: int, stability_seeds: int,
             heldout_samples: int) -> list[_Fit]:
    """The LIME loop shared by images and tables: perturb, predict in shared batches, fit, score."""
    input_shape = inputs.shape[1:]
    keys = list(range(len(inputs))) if sample_keys is None else [int(key) for key in sample_keys]
    if len(keys) != len(inputs) or min(keys, default=0) < 0:
        raise LimeInputError(f"sample_keys has {len(keys)} entries for {len(inputs)} samples; give one "
                             "non-negative integer per sample (e.g. its index in the data set)")
    probabilities = predict_in_batches(predict, [_Given(inputs)], input_shape, batch_size)[0]
    labels = _resolve_labels(labels, probabilities)
    runs = [
        [perturber.neighbourhood(index, np.random.default_rng([seed + run, keys[index]]), num_samples + heldout_samples)
         for index in range(len(inputs))]
        for run in range(stability_seeds)
    ]
    predicted = predict_in_batches(predict, [hood.inputs for run in runs for hood in run], input_shape, batch_size)
    # One BLAS thread: these solves are tiny, and woken BLAS threads spin on the cores the model needs next.
    with threadpool_limits(limits=1, user_api="blas"):
        surrogates = [
            [_surrogate(hood, predicted[run * len(inputs) + index], labels[index], num_samples, distance,
                        kernel_width)
             for index, hood in enumerate(hoods)]
            for run, hoods in enumerate(runs)
        ]
    curve_masks = [deletion_insertion_masks(attribution_order(coef)) for coef, *_ in surrogates[0]]
    curve_inputs = [perturber.masked(index, masks.reshape(-1, masks.shape[-1]))
                    for index, masks in enumerate(curve_masks)]
    curves = predict_in_batches(predict, curve_inputs, input_shape, batch_size)
    fits = []
    for index, (coef, intercept, r2, r2_heldout) in enumerate(surrogates[0]):
        sample_labels = labels[index]
        stability = None
        if stability_seeds > 1:
            k = min(top_k, coef.shape[1])
            tops = np.stack([attribution_order(run[index][0])[:, :k] for run in surrogates], axis=1)
            stability = np.array([top_k_jaccard(label_tops) for label_tops in tops])
        masks = curve_masks[index]
        label_curves = curves[index].reshape(*masks.shape[:3], -1)  # (L, 2, points, K)
        fractions = curve_steps(masks.shape[-1]) / masks.shape[-1]
        auc = curve_auc(np.take_along_axis(label_curves, sample_labels[:, None, None, None], axis=3)[..., 0],
                        fractions)
        fits.append(_Fit(sample_labels, probabilities[index, sample_labels], coef, intercept, r2, r2_heldout,
                         stability, deletion_auc=auc[:, 0], insertion_auc=auc[:, 1]))
    return fits


def _tables(fits: list[_Fit], features: list[Sequence], *, top_k: int, kernel_width: float, num_samples: int,
            explanation_extra, attribution_extra, by_magnitude: bool = False) -> tuple[list[dict], list[dict]]:
    """Rows of the explanations and attributions tables; the callbacks add the method-specific columns.

    Features rank by weight (images: the superpixels that support the label, as lime's positive-only mask) or,
    ``by_magnitude``, by |weight| (tabular: a column that argues against the label matters too, as lime's
    ``as_list``)."""
    explanations, attributions = [], []
    for index, fit in enumerate(fits):
        names = features[index]
        for row, label in enumerate(fit.labels):
            weights = fit.coef[row : row + 1]
            order = attribution_order(np.abs(weights) if by_magnitude else weights)[0]
            top = order[: min(top_k, len(order))]
            local_prediction = float(fit.intercept[row] + fit.coef[row].sum())
            explanations.append({
                "sample_index": index,
                "label": int(label),
                "probability": float(fit.probability[row]),
                "intercept": float(fit.intercept[row]),
                "local_prediction": local_prediction,
                "r2_in_sample": float(fit.r2_in_sample[row]),
                "r2_heldout": None if fit.r2_heldout is None else float(fit.r2_heldout[row]),
                "prediction_gap": abs(local_prediction - float(fit.probability[row])),
                "stability": None if fit.stability is None else float(fit.stability[row]),
                "deletion_auc": float(fit.deletion_auc[row]),
                "insertion_auc": float(fit.insertion_auc[row]),
                "kernel_width": float(kernel_width),
                "num_samples": num_samples,
                "num_features": len(order),
                "top_features": [names[f] for f in top],
                **explanation_extra(index, top),
            })
            rank = np.empty(len(order), dtype=np.int64)
            rank[order] = np.arange(1, len(order) + 1)
            for feature in order:
                attributions.append({
                    "sample_index": index,
                    "label": int(label),
                    "feature": names[feature],
                    "weight": float(fit.coef[row, feature]),
                    "rank": int(rank[feature]),
                    **attribution_extra(index, feature),
                })
    return explanations, attributions


@dataclass(frozen=True)
class LimeResult:
    """The two report tables as lists of rows, plus the segment maps the image explanations refer to.

    explanations, one row per sample x label: sample_index, label, probability (the model's, on the input),
    intercept, local_prediction (the surrogate's with every feature on), r2_in_sample, r2_heldout (None
    without held-out rows), prediction_gap (|local_prediction - probability|), stability (mean pairwise
    Jaccard of the top-k sets over the stability seeds; None for one seed), deletion_auc, insertion_auc,
    kernel_width, num_samples, num_features, top_features, and for images overlay_png and segments_png (the superpixel map).
    attributions, one row per sample x label x feature: sample_index, label, feature (the original segment
    id, or the feature name), weight, rank (1 = most positive weight for images, largest |weight| for tables), and area_fraction (images) or bin
    (tables: the instance's quartile bin, named as lime names it).
    """

    explanations: list[dict]
    attributions: list[dict]
    segment_maps: list[np.ndarray] = field(default_factory=list)  # images only: the (H, W) maps, original ids


# ------------------------------------------------------------------------------------------------- images


@dataclass(frozen=True)
class Segmentation:
    """Superpixels, with lime's quickshift defaults; `random_seed` breaks quickshift's ties (skimage's rng)."""

    method: Literal["quickshift", "slic"] = "quickshift"
    kernel_size: float = 4
    max_dist: float = 200
    ratio: float = 0.2
    random_seed: int = 42
    n_segments: int = 50
    compactness: float = 10.0

    def __post_init__(self) -> None:
        if self.method not in ("quickshift", "slic"):
            raise LimeInputError(f"segmentation method {self.method!r} is unknown; use 'quickshift' or 'slic'")

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """(H, W, C) in [0, 1] -> (H, W) integer segment ids; gray is repeated to RGB as lime does."""
        from skimage.segmentation import quickshift, slic
        from skimage.util import img_as_float64

        rgb = image if image.shape[-1] == 3 else np.repeat(image[..., :1], 3, axis=-1)
        # float64, as lime's usual uint8 photos reach skimage: its float32 quickshift is 15% slower (expf)
        rgb = img_as_float64(rgb)
        if self.method == "quickshift":
            return quickshift(rgb, kernel_size=self.kernel_size, max_dist=self.max_dist, ratio=self.ratio,
                              rng=self.random_seed)
        return slic(rgb, n_segments=self.n_segments, compactness=self.compactness)


def segment_means(source: np.ndarray, segment_of_pixel: np.ndarray, num_segments: int) -> np.ndarray:
    """(C, S) per-channel mean of each segment of a (C, P) image."""
    channels = len(source)
    index = segment_of_pixel[None, :] + num_segments * np.arange(channels)[:, None]
    sums = np.bincount(index.ravel(), weights=source.ravel(), minlength=channels * num_segments)
    counts = np.bincount(segment_of_pixel, minlength=num_segments)
    return (sums.reshape(channels, num_segments) / counts).astype(np.float32)


def overlay_png(display: np.ndarray, segment_map: np.ndarray, top_segments: np.ndarray) -> bytes:
    """PNG of the image with the top segments at full brightness and outlined, the rest dimmed."""
    from skimage.segmentation import find_boundaries

    rgb = display if display.shape[-1] == 3 else np.repeat(display[..., :1], 3, axis=-1)
    chosen = np.isin(segment_map, top_segments)
    image = np.where(chosen[..., None], rgb, rgb * OVERLAY_DIM)
    image[find_boundaries(chosen, mode="inner")] = OVERLAY_EDGE
    return png_bytes(image)


@dataclass(frozen=True)
class _SegmentedImages:
    """Images as segment masks see them: model input, fill and the segment of each pixel, per sample."""

    sources: np.ndarray  # (N, C, P) float32
    fills: list[np.ndarray]  # (C, P) float32 each
    runs: list[_PixelRuns]
    num_segments: list[int]

    def masked(self, index: int, masks: np.ndarray) -> _MaskedImage:
        fill_bits = self.fills[index].view(np.int32)
        return _MaskedImage(fill_bits, self.sources[index].view(np.int32) ^ fill_bits, self.runs[index],
                            masks)

    def neighbourhood(self, index: int, rng: np.random.Generator, rows: int) -> _Neighbourhood:
        """Uniform random on/off segments, the first row all on (the image itself)."""
        masks = rng.integers(0, 2, size=(rows, self.num_segments[index]), dtype=np.uint8).astype(bool)
        masks[0] = True
        return _Neighbourhood(masks, self.masked(index, masks))


def _usable_cores() -> int:
    """Cores this process may run on (its affinity where the OS tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _segment(segmentation: Segmentation, image: np.ndarray, index: int) -> np.ndarray:
    segment_map = np.asarray(segmentation(image))
    if segment_map.shape != image.shape[:2] or not np.issubdtype(segment_map.dtype, np.integer):
        raise LimeInputError(f"segmentation gave {segment_map.dtype} shape {segment_map.shape} for sample {index}; "
                         f"it must return integer ids of shape {image.shape[:2]}")
    if len(np.unique(segment_map)) < 2:
        raise LimeInputError(f"segmentation gave 1 segment for sample {index}; lower kernel_size/max_dist or "
                         "raise n_segments")
    return segment_map


class ImageLime:
    """LIME on superpixels, as lime.lime_image.LimeImageExplainer with its defaults.

    Differences from the package, all deliberate: segment ids may be any integers (the package assumes
    0..K-1) and are reported as given; R^2 is kept per label (the package overwrites it with the last
    label's); masks come from numpy's default_rng seeded per (seed, sample) rather than a shared RandomState,
    so draws are not the package's; quickshift ties are broken by Segmentation.random_seed (fixed) instead
    of a random seed per call; Segmentation gives skimage float64 pixels (the package's path for uint8
    photos; the package's own segmenter keeps float32 photos float32, which gives slightly different
    superpixels); every segment is a feature with no feature-selection pre-fit (for images the package's
    'auto' selection keeps all of them, so weights are the same); hidden pixels are filled in model-input
    space, which equals the package's display-space mean fill for per-channel affine normalization.
    """

    def __init__(self, predict: Predict, batch_size: int = 256):
        self.predict = predict
        self.batch_size = _check_batch_size(batch_size)

    def attribute(self, x: np.ndarray, display: np.ndarray, labels: list[list[int]] | None = None, *,
                  num_samples: int = 1000, kernel_width: float = 0.25, top_k: int = 5,
                  hide: Literal["mean"] | float = "mean", segmentation: Segmentation = Segmentation(),
                  seed: int = 0, stability_seeds: int = 3, heldout_samples: int = 200,
                  sample_keys: Sequence[int] | None = None) -> LimeResult:
        """Explain each image in x (N, C, H, W) for its labels; display (N, H, W, C') in [0, 1] is segmented.

        Segmentation runs in threads on every core, so a custom segmentation must be thread-safe.
        """
        _check_settings(num_samples, kernel_width, top_k, seed, stability_seeds, heldout_samples)
        x = np.ascontiguousarray(x, dtype=np.float32)
        display = np.asarray(display)
        display = display[..., None] if display.ndim == 3 else display
        if x.ndim != 4 or display.shape[:3] != (len(x), *x.shape[2:]) or display.shape[-1] not in (1, 3):
            raise LimeInputError(f"x has shape {x.shape} and display {display.shape}; give x as (N, C, H, W) and display "
                             "as (N, H, W, 1 or 3) with the same N, H and W")
        if hide != "mean" and not isinstance(hide, (int, float, np.floating)):
            raise LimeInputError(f"hide={hide!r} must be 'mean' or a number in model-input units")
        # skimage's segmenters release the GIL, and the model is idle meanwhile: use every core
        with ThreadPoolExecutor(max_workers=max(1, min(len(display), _usable_cores()))) as pool:
            segment_maps = list(pool.map(partial(_segment, segmentation), display, range(len(display))))
        ids, segment_of_pixel = zip(*(np.unique(m, return_inverse=True) for m in segment_maps))
        segment_of_pixel = [index.ravel() for index in segment_of_pixel]
        channels, pixels = x.shape[1], x.shape[2] * x.shape[3]
        sources = x.reshape(len(x), channels, pixels)
        fills = [  # row-major (np.take; [:, index] would give column-major and stride every compose pass)
            np.take(segment_means(source, index, len(names)), index, axis=1) if hide == "mean"
            else np.full((channels, pixels), hide, dtype=np.float32)
            for source, index, names in zip(sources, segment_of_pixel, ids)
        ]
        images = _SegmentedImages(sources, fills, [_PixelRuns.of(index) for index in segment_of_pixel],
                                  [len(names) for names in ids])
        fits = _fit_all(self.predict, self.batch_size, images, x, labels, sample_keys=sample_keys,
                        num_samples=num_samples,
                        distance=cosine_distance_to_all_on, kernel_width=kernel_width, top_k=top_k, seed=seed,
                        stability_seeds=stability_seeds, heldout_samples=heldout_samples)
        area_fractions = [np.bincount(index) / pixels for index in segment_of_pixel]
        explanations, attributions = _tables(
            fits, [names.tolist() for names in ids], top_k=top_k, kernel_width=kernel_width, num_samples=num_samples,
            explanation_extra=lambda i, top: {"overlay_png": overlay_png(display[i], segment_maps[i], ids[i][top]),
                                             "segments_png": label_map_png(segment_maps[i])},
            attribution_extra=lambda i, feature: {"area_fraction": float(area_fractions[i][feature])},
        )
        return LimeResult(explanations, attributions, segment_maps)


# ------------------------------------------------------------------------------------------------- tables


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
        values[spread] = truncnorm.rvs((low[spread] - mean[spread]) / std[spread],
                                       (high[spread] - mean[spread]) / std[spread],
                                       loc=mean[spread], scale=std[spread], random_state=rng)
        return values


def fit_quartile_bins(training_data: np.ndarray, feature_names: list[str]) -> QuartileBins:
    """Bin edges, names and per-bin statistics exactly as lime.discretize.QuartileDiscretizer computes them."""
    edges = [np.unique(np.percentile(column, [25, 50, 75])) for column in training_data.T]
    width = max(len(e) for e in edges) + 1
    tables = {key: np.zeros((len(edges), width)) for key in ("frequencies", "means", "stds", "lows", "highs")}
    names = []
    for f, (column, cuts) in enumerate(zip(training_data.T, edges)):
        name = feature_names[f]
        names.append([f"{name} <= {cuts[0]:.2f}"]
                     + [f"{a:.2f} < {name} <= {b:.2f}" for a, b in zip(cuts[:-1], cuts[1:])]
                     + [f"{name} > {cuts[-1]:.2f}"])
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
class _BinnedRows:
    """Rows as lime's tabular sampler sees them: the instances, their bins, and the training mean to hide with."""

    bins: QuartileBins
    rows: np.ndarray  # (N, D)
    instance_bins: np.ndarray  # (N, D)
    training_mean: np.ndarray  # (D,)

    def masked(self, index: int, masks: np.ndarray) -> _Given:
        return _Given(np.where(masks, self.rows[index], self.training_mean).astype(np.float32))

    def neighbourhood(self, index: int, rng: np.random.Generator, rows: int) -> _Neighbourhood:
        """Bins drawn with training frequencies, values drawn inside them; row 0 is the instance itself."""
        bins = self.bins.sample_bins(rng, rows)
        values = self.bins.sample_values(rng, bins)
        values[0] = self.rows[index]
        binary = bins == self.instance_bins[index]
        binary[0] = True
        return _Neighbourhood(binary, _Given(values.astype(np.float32)))


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
            raise LimeInputError(f"training_data has shape {training_data.shape} and {len(feature_names)} feature names; "
                             "give (n >= 2, D) rows and D names")
        self.predict = predict
        self.batch_size = _check_batch_size(batch_size)
        self.feature_names = [str(name) for name in feature_names]
        self.bins = fit_quartile_bins(training_data, self.feature_names)
        self.training_mean = training_data.mean(axis=0)

    def attribute(self, rows: np.ndarray, labels: list[list[int]] | None = None, *, num_samples: int = 5000,
                  kernel_width: float | None = None, top_k: int = 5, seed: int = 0, stability_seeds: int = 3,
                  heldout_samples: int = 200, sample_keys: Sequence[int] | None = None) -> LimeResult:
        """Explain each row (N, D) for its labels; kernel_width None means lime's 0.75 * sqrt(D)."""
        _check_settings(num_samples, kernel_width, top_k, seed, stability_seeds, heldout_samples)
        rows = np.asarray(rows, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != len(self.feature_names):
            raise LimeInputError(f"rows have shape {rows.shape}; give (N, {len(self.feature_names)}) like training_data")
        width = 0.75 * np.sqrt(rows.shape[1]) if kernel_width is None else kernel_width
        binned = _BinnedRows(self.bins, rows, self.bins.bin_of(rows), self.training_mean)
        fits = _fit_all(self.predict, self.batch_size, binned, rows.astype(np.float32), labels, sample_keys=sample_keys,
                        num_samples=num_samples, distance=euclidean_distance_to_all_on, kernel_width=width,
                        top_k=top_k, seed=seed, stability_seeds=stability_seeds, heldout_samples=heldout_samples)
        return LimeResult(*_tables(
            fits, [self.feature_names] * len(rows), top_k=top_k, kernel_width=width, num_samples=num_samples,
            explanation_extra=lambda i, top: {},
            attribution_extra=lambda i, f: {"bin": self.bins.names[f][binned.instance_bins[i, f]]},
            by_magnitude=True,
        ))
