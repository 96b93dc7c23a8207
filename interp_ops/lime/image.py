"""LIME on images: superpixels are the features, and a hidden superpixel takes a fill value.

The perturbed images are never built as a stack: each batch is composed straight into the model's buffer from
the image, its fill and its superpixel map, with a bit-select that leaves shown pixels bit-exact.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Literal

import numpy as np

from interp_ops.images import png_bytes
from interp_ops.lime.batching import Predict
from interp_ops.lime.errors import LimeInputError
from interp_ops.lime.explain import (
    FixedSurrogates,
    LoopSettings,
    check_batch_size,
    explain_samples,
    fixed_surrogates,
)
from interp_ops.lime.perturb import Neighbourhood, cosine_distance_to_all_on
from interp_ops.lime.tables import LimeResult, table_rows

OVERLAY_DIM = 0.3  # brightness of the segments outside the top k in the overlay
OVERLAY_EDGE = (1.0, 0.85, 0.0)  # outline colour of the top-k segments


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
            return quickshift(
                rgb, kernel_size=self.kernel_size, max_dist=self.max_dist, ratio=self.ratio, rng=self.random_seed
            )
        segments = slic(rgb, n_segments=self.n_segments, compactness=self.compactness)
        if segments.max() == segments.min():
            # skimage's connectivity step can merge a whole image into one segment (seen on 3 of 1,024 builtin
            # scenes at n_segments=30); that image is segmented again without it, so it can still be explained
            segments = slic(rgb, n_segments=self.n_segments, compactness=self.compactness, enforce_connectivity=False)
        return segments


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
    """Perturbed copies of one image (a ModelRows): where a row's segment is off, its pixels take the fill value."""

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
class SegmentedImages:
    """The image Perturbation: images as segment masks see them (model input, fill and the segment of each
    pixel, per sample); the features are the segments, renumbered 0..S-1."""

    sources: np.ndarray  # (N, C, P) float32
    fills: list[np.ndarray]  # (C, P) float32 each
    runs: list[_PixelRuns]
    num_segments: list[int]

    def masked(self, index: int, masks: np.ndarray) -> _MaskedImage:
        fill_bits = self.fills[index].view(np.int32)
        return _MaskedImage(fill_bits, self.sources[index].view(np.int32) ^ fill_bits, self.runs[index], masks)

    def neighbourhood(self, index: int, rng: np.random.Generator, rows: int) -> Neighbourhood:
        """Uniform random on/off segments, the first row all on (the image itself)."""
        masks = rng.integers(0, 2, size=(rows, self.num_segments[index]), dtype=np.uint8).astype(bool)
        masks[0] = True
        return Neighbourhood(masks, self.masked(index, masks))

    def distance(self, binary: np.ndarray) -> np.ndarray:
        """Cosine distance, as lime_image."""
        return cosine_distance_to_all_on(binary)


def _usable_cores() -> int:
    """Cores this process may run on (its affinity where the OS tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _segment(segmentation: Segmentation, image: np.ndarray, index: int) -> np.ndarray:
    segment_map = np.asarray(segmentation(image))
    if segment_map.shape != image.shape[:2] or not np.issubdtype(segment_map.dtype, np.integer):
        raise LimeInputError(
            f"segmentation gave {segment_map.dtype} shape {segment_map.shape} for sample {index}; "
            f"it must return integer ids of shape {image.shape[:2]}"
        )
    if len(np.unique(segment_map)) < 2:
        raise LimeInputError(
            f"segmentation gave 1 segment for sample {index}; lower kernel_size/max_dist or raise n_segments"
        )
    return segment_map


class ImageLime:
    """LIME on superpixels, as lime.lime_image.LimeImageExplainer with its defaults.

    Differences from the package, all deliberate: segment ids may be any integers (the package assumes
    0..K-1) and are reported as given (``segment``, and in decimal as the ``feature`` name); R^2 is kept per
    label (the package overwrites it with the last label's); masks come from numpy's default_rng seeded per
    (seed, sample) rather than a shared RandomState, so draws are not the package's; quickshift ties are
    broken by Segmentation.random_seed (fixed) instead of a random seed per call; Segmentation gives skimage
    float64 pixels (the package's path for uint8 photos; the package's own segmenter keeps float32 photos
    float32, which gives slightly different superpixels); every segment is a feature with no
    feature-selection pre-fit (for images the package's 'auto' selection keeps all of them, so weights are
    the same); hidden pixels are filled in model-input space, which equals the package's display-space mean
    fill for per-channel affine normalization.
    """

    def __init__(self, predict: Predict, batch_size: int = 256):
        self.predict = predict
        self.batch_size = check_batch_size(batch_size)

    def attribute(
        self,
        x: np.ndarray,
        display: np.ndarray,
        labels: list[list[int]] | None = None,
        *,
        num_samples: int = 1000,
        kernel_width: float = 0.25,
        top_k: int = 5,
        hide: Literal["mean"] | float = "mean",
        segmentation: Segmentation = Segmentation(),
        seed: int = 0,
        stability_seeds: int = 3,
        heldout_samples: int = 200,
        faithfulness_runs: int = 50,
        faithfulness_subset: float = 0.25,
        sample_keys: Sequence[int] | None = None,
    ) -> LimeResult:
        """Explain each image in x (N, C, H, W) for its labels; display (N, H, W, C') in [0, 1] is segmented.

        Segmentation runs in threads on every core, so a custom segmentation must be thread-safe.
        faithfulness_runs random subsets of faithfulness_subset of the superpixels are hidden for the
        faithfulness correlation (0 runs: skipped); each run is one more forward pass per image.
        """
        settings = LoopSettings(
            num_samples,
            kernel_width,
            top_k,
            seed,
            stability_seeds,
            heldout_samples,
            faithfulness_runs,
            faithfulness_subset,
        )
        x, display, segmented = _segmented(x, display, hide, segmentation)
        images, segment_maps, ids, segment_of_pixel = segmented
        pixels = x.shape[2] * x.shape[3]
        fits = explain_samples(self.predict, self.batch_size, images, x, labels, settings, sample_keys)
        area_fractions = [np.bincount(index) / pixels for index in segment_of_pixel]
        height, width = x.shape[2:]
        flat_maps = [segment_map.astype(np.int64).ravel() for segment_map in segment_maps]
        explanations, attributions = table_rows(
            fits,
            [[str(segment) for segment in names] for names in ids],
            settings,
            explanation_extra=lambda i, top: {
                "overlay_png": overlay_png(display[i], segment_maps[i], ids[i][top]),
                "segments": flat_maps[i],
                "height": height,
                "width": width,
            },
            attribution_extra=lambda i, feature: {
                "segment": int(ids[i][feature]),
                "area_fraction": float(area_fractions[i][feature]),
            },
        )
        return LimeResult(explanations, attributions)

    def fixed_surrogates(
        self,
        x: np.ndarray,
        display: np.ndarray,
        labels: list[list[int]] | None = None,
        *,
        num_samples: int = 1000,
        kernel_width: float = 0.25,
        hide: Literal["mean"] | float = "mean",
        segmentation: Segmentation = Segmentation(),
        seed: int = 0,
        heldout_samples: int = 200,
        sample_keys: Sequence[int] | None = None,
    ) -> FixedSurrogates:
        """``attribute``'s surrogate weights (same segments, perturbations and labels, taken with this explainer's
        model) as a function of the model: what a sanity check compares across randomised models."""
        settings = LoopSettings(num_samples, kernel_width, 1, seed, 1, heldout_samples)
        x, _, (images, *_) = _segmented(x, display, hide, segmentation)
        return fixed_surrogates(self.predict, self.batch_size, images, x, labels, settings, sample_keys)


def _segmented(x: np.ndarray, display: np.ndarray, hide, segmentation: Segmentation):
    """x as float32, display as (N, H, W, C'), and (the segmented images, their segment maps, each image's segment
    ids, each pixel's segment index per image)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    display = np.asarray(display)
    display = display[..., None] if display.ndim == 3 else display
    if x.ndim != 4 or display.shape[:3] != (len(x), *x.shape[2:]) or display.shape[-1] not in (1, 3):
        raise LimeInputError(
            f"x has shape {x.shape} and display {display.shape}; give x as (N, C, H, W) and "
            "display as (N, H, W, 1 or 3) with the same N, H and W"
        )
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
        np.take(segment_means(source, index, len(names)), index, axis=1)
        if hide == "mean"
        else np.full((channels, pixels), hide, dtype=np.float32)
        for source, index, names in zip(sources, segment_of_pixel, ids)
    ]
    images = SegmentedImages(
        sources, fills, [_PixelRuns.of(index) for index in segment_of_pixel], [len(names) for names in ids]
    )
    return x, display, (images, segment_maps, ids, segment_of_pixel)
