"""Network dissection (Bau et al. 2017), computing what NetDissect-Lite computes, number for number, in a stream.

For every unit u of an audited layer and every concept label c of a Broden-format concept set:

1. Threshold. ``T_u`` is the ``1 - quantile`` quantile of all of u's raw activation values (every image, every
   spatial position, before any upsampling), by numpy's default ("linear") rule: with the n values sorted
   ascending as x_0..x_{n-1}, v = (n - 1) * (1 - quantile), T_u = lerp(x_floor(v), x_floor(v)+1, v - floor(v)).
   NetDissect-Lite computes ``np.percentile(features, 100 * (1 - quantile), axis=[0, 2, 3])`` on all features
   held in memory; we get the same value (``numpy.quantile(values, 1 - quantile)`` exactly, in float64) from an
   exact running top-k of the ``n - floor(v)`` largest values per unit.
2. Activation masks. Each activation map is upsampled bilinearly to the mask size (sh, sw), as NetDissect-Lite's
   ``imresize(mode='F')`` does with PIL: half-pixel centres with edge clamping (what torch calls
   ``align_corners=False``; when a map is larger than the masks, PIL's triangle filter, torch's antialiased
   bilinear), and thresholded: ``upsampled > T_u``. A map whose raw maximum is not above T_u is skipped
   (NetDissect-Lite's own test; bilinear weights are convex, so its upsampled map could not exceed T_u anyway).
3. Tally over the data set, with label ids and categories as in NetDissect-Lite:
   - I[u, c]: activated pixels of u that carry label c in any mask layer (a whole-image label: all of them);
   - G[c]: pixels carrying c (sh * sw per image for a whole-image label);
   - A[u, k]: activated pixels of u on those images where u's activated pixels touch at least one pixel labelled
     with category k, or where the image has a whole-image label of category k. (NetDissect-Lite's rule. It
     is narrower than "images that carry category k": activated pixels that touch no labelled pixel of k do not
     count against k's labels.)
   - IoU[u, c] = I / (A[u, category(c)] + G[c] - I + 1e-10); category(c) is c's primary category (the one where its
     coverage in c_<category>.csv is largest).
   A unit's best concept is its label of largest IoU; it is a detector when that IoU >= iou_threshold (0.04).

How it streams: one forward pass. While the running top-k rises, every activation map whose maximum exceeds
the unit's current k-th largest value is kept (raw, at layer resolution) and the rest dropped; the k-th largest
only rises, and T_u is at least the final k-th largest, so every map that can pass step 2 is kept. Kept maps
are pruned as the bound rises: at most about k maps per unit remain. A second pass reads only the masks and
tallies the kept maps, vectorised over maps, pixels and labels; it evaluates upsampled values only near the
threshold (see ``_ActivePixels``). Pixel-exactness: our bilinear values and PIL's agree to a few float32 ulps,
so a pixel within an ulp or two of T_u may fall the other way than in NetDissect-Lite.
"""

from __future__ import annotations

import contextlib
import copy
import queue
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from interp_ops.concepts import MAX_MASK_LABEL, ConceptBatch, ConceptSet
from interp_ops.datasets import Samples, to_model_input

DEFAULT_QUANTILE = 0.005
DEFAULT_IOU_THRESHOLD = 0.04
DEFAULT_TALLY_FLOOR = 0.01
IOU_EPSILON = 1e-10  # NetDissect-Lite's guard against an empty union
UPSAMPLE_CHUNK = 1 << 23  # output pixels per upsampling call (32 MB of float32)
_Item = TypeVar("_Item")


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


# --- step 1: the exact quantile threshold -------------------------------------------------------


def _quantile_position(count: int, quantile: float) -> tuple[int, float]:
    """(floor(v), v - floor(v)) for v = (count - 1) * (1 - quantile), as numpy's linear method computes it."""
    virtual = (count - 1) * (1.0 - quantile)
    below = int(np.floor(virtual))
    if virtual >= count - 1:
        return count - 1, 0.0
    return below, virtual - below


def top_values_needed(count: int, quantile: float) -> int:
    """How many of the largest values determine the (1 - quantile) quantile of ``count`` values."""
    below, _ = _quantile_position(count, quantile)
    return count - below


def exact_quantile_threshold(top_values: np.ndarray, count: int, quantile: float) -> np.ndarray:
    """``numpy.quantile(values, 1 - quantile, axis=1)`` of per-unit values (U, count), in float64, exactly,
    from ``top_values`` (U, k): at least the ``top_values_needed(count, quantile)`` largest values of each row.

    numpy's lerp: a + (b - a) * g, or b - (b - a) * (1 - g) when g >= 0.5. Both are >= a (the k-th largest):
    maps whose maximum does not exceed the k-th largest value can never exceed the threshold.
    """
    below, gamma = _quantile_position(count, quantile)
    ordered = np.sort(np.asarray(top_values, dtype=np.float64), axis=1)[:, ::-1]  # descending
    rank_below = count - 1 - below  # 0-based rank from the top of sorted position `below`
    a = ordered[:, rank_below]
    b = ordered[:, max(rank_below - 1, 0)]
    diff = b - a
    if gamma >= 0.5:
        return b - diff * (1.0 - gamma)
    return a + diff * gamma


def float32_below(threshold: np.ndarray) -> np.ndarray:
    """The largest float32 <= each float64 threshold: for float32 x, ``x > t`` exactly when ``x > float32_below(t)``."""
    rounded = np.asarray(threshold, dtype=np.float64).astype(np.float32)
    too_big = rounded.astype(np.float64) > threshold
    rounded[too_big] = np.nextafter(rounded[too_big], np.float32(-np.inf))
    return rounded


@dataclass(frozen=True)
class _Axis:
    """Bilinear sampling along one axis, n -> size: output i reads source rows low[i] and low[i] + 1 with
    weights (w_low[i], w_high[i]) = (1 - t, t); half-pixel centres, clamped at the edges (a clamped output row
    reads one source row with weight 1). Output rows sharing ``low`` form one cell."""

    low: torch.Tensor  # (size,) int64, in 0..max(n - 2, 0)
    high: torch.Tensor  # (size,) int64, low + 1 (or 0 when n == 1)
    w_low: torch.Tensor  # (size,) float32
    w_high: torch.Tensor  # (size,) float32

    @staticmethod
    def build(n: int, size: int, device: torch.device) -> _Axis:
        source = np.clip((np.arange(size) + 0.5) * (n / size) - 0.5, 0.0, n - 1)
        low = np.minimum(np.floor(source).astype(np.int64), max(n - 2, 0))
        t = source - low
        return _Axis(*(torch.from_numpy(array).to(device) for array in (
            low, np.minimum(low + 1, n - 1), (1.0 - t).astype(np.float32), t.astype(np.float32))))

    def cells(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per cell (pair of neighbouring source rows): its output rows and their two weights."""
        cells = []
        for cell in range(int(self.low.max()) + 1):
            rows = torch.nonzero(self.low == cell)[:, 0]
            cells.append((rows, self.w_low[rows], self.w_high[rows]))
        return cells


def _enlarges(maps_size: tuple[int, int], size: tuple[int, int]) -> bool:
    return size[0] >= maps_size[0] and size[1] >= maps_size[1]


def upsample_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(M, h, w) -> (M, sh, sw) float32: bilinear with half-pixel centres and edge clamping, which is what PIL's
    BILINEAR resize (NetDissect-Lite's ``imresize(mode='F')``) computes, to float32 rounding.

    Enlarging (the usual case) evaluates ``(w0 * (v00 * u0 + v01 * u1)) + (w1 * (v10 * u0 + v11 * u1))``
    elementwise, rows first, so that the sparse evaluation in the tally gives bit-identical values; shrinking
    uses torch's antialiased bilinear filter, which matches PIL's triangle filter then.
    """
    height, width = maps.shape[-2:]
    if not _enlarges((height, width), size):
        return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False, antialias=True)[:, 0]
    rows, cols = _Axis.build(height, size[0], maps.device), _Axis.build(width, size[1], maps.device)
    along_cols = maps[:, :, cols.low] * cols.w_low + maps[:, :, cols.high] * cols.w_high  # (M, h, sw)
    return along_cols[:, rows.low, :] * rows.w_low[:, None] + along_cols[:, rows.high, :] * rows.w_high[:, None]


class _ActivePixels:
    """The pixels (map, sh * sw index) where upsampled maps exceed their thresholds.

    When enlarging, only the cells (2x2 source blocks) whose maximum comes near the threshold are looked at (a
    bilinear value is a convex combination of its block, so no other pixel can pass), and in them only the columns
    whose ends come near it (down a column the value is linear between the cell's top and bottom rows). The
    margin (2^-18 of the map's largest magnitude) covers float rounding. The values compared are computed with
    the same float32 operations as ``upsample_maps``, so the pixels found are exactly the dense ones.

    Two layouts of that evaluation, chosen by measurement on 1-2 CPU threads: where a cell spans at most
    ``PADDED_WIDTH`` output rows and columns (enlarging up to ~10x), all cells at once, each padded to the widest
    cell (1.2-2.5x faster there: no per-cell Python loop, no sorting); beyond, grouped by cell column and by cell
    row, where the padded layout's gathered weights cost more than the loop saves (up to 1.3x slower at 16x).
    """

    MARGIN = 2.0**-18
    PADDED_WIDTH = 16

    def __init__(self, maps_size: tuple[int, int], size: tuple[int, int], device: torch.device):
        self.maps_size, self.size = maps_size, size
        self.sparse = _enlarges(maps_size, size) and min(maps_size) >= 2
        if self.sparse:
            rows = _Axis.build(maps_size[0], size[0], device)
            cols = _Axis.build(maps_size[1], size[1], device)
            widest = max(int(torch.bincount(axis.low).max()) for axis in (rows, cols))
            self.padded = widest <= self.PADDED_WIDTH
            if self.padded:
                self.rows, self.cols = _padded_cells(rows), _padded_cells(cols)
            else:
                self.rows, self.cols = rows.cells(), cols.cells()

    def __call__(self, maps: torch.Tensor, threshold: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.sparse:
            active = upsample_maps(maps, self.size) > threshold[:, None, None]
            return torch.nonzero(active.flatten(1), as_tuple=True)
        values = maps.flatten(1)
        floor = threshold - self.MARGIN * torch.maximum(values.amax(dim=1), -values.amin(dim=1))
        # cells with a corner above the floor, i.e. whose maximum is above it (bool ORs: cheaper than max)
        hot = maps > floor[:, None, None]
        across = hot[:, :, :-1] | hot[:, :, 1:]
        pair, cell_row, cell_col = torch.nonzero(across[:, :-1] | across[:, 1:], as_tuple=True)
        if self.padded:
            return self._padded(maps, threshold, floor, pair, cell_row, cell_col)
        return self._grouped(maps, threshold, floor, pair, cell_row, cell_col)

    def _padded(self, maps, threshold, floor, pair, cell_row, cell_col):
        height, width = self.maps_size
        base = (pair * height + cell_row) * width + cell_col
        corners = torch.tensor([0, 1, width, width + 1], device=maps.device)
        v = maps.flatten().take(base[:, None] + corners)  # (N, 4): top left, top right, bottom left, bottom right
        # stage 1: per cell, the top and bottom rows along its output columns (padding has NaN weights)
        col_index, col_weights = self.cols
        span = col_index.shape[1]
        u = col_weights.index_select(0, cell_col)  # (N, 2, span)
        upper = v[:, 0:1] * u[:, 0] + v[:, 1:2] * u[:, 1]
        lower = v[:, 2:3] * u[:, 0] + v[:, 3:4] * u[:, 1]
        level = floor.index_select(0, pair)[:, None]
        found = torch.nonzero(((upper > level) | (lower > level)).flatten())[:, 0]
        q = torch.div(found, span, rounding_mode="floor")
        pair, cell_row = pair.index_select(0, q), cell_row.index_select(0, q)
        column = col_index.flatten().take(cell_col.index_select(0, q) * span + (found - q * span))
        upper, lower = upper.flatten().index_select(0, found), lower.flatten().index_select(0, found)
        # stage 2: every output row of those columns
        row_index, row_weights = self.rows
        span = row_index.shape[1]
        w = row_weights.index_select(0, cell_row)  # (Z, 2, span)
        values = upper[:, None] * w[:, 0] + lower[:, None] * w[:, 1]
        found = torch.nonzero((values > threshold.index_select(0, pair)[:, None]).flatten())[:, 0]
        z = torch.div(found, span, rounding_mode="floor")
        row = row_index.flatten().take(cell_row.index_select(0, z) * span + (found - z * span))
        return pair.index_select(0, z), row * self.size[1] + column.index_select(0, z)

    def _grouped(self, maps, threshold, floor, pair, cell_row, cell_col):
        # stage 1, per cell column: the cell's top and bottom rows along its output columns
        found = []  # (pair, cell row, output column, top value, bottom value) of columns that may pass
        order = torch.argsort(cell_col, stable=True)
        pair, cell_row, cell_col = pair[order], cell_row[order], cell_col[order]
        bounds = torch.searchsorted(cell_col, torch.arange(len(self.cols) + 1, device=maps.device)).tolist()
        for c, (cols, u0, u1) in enumerate(self.cols):
            if bounds[c] == bounds[c + 1]:
                continue
            p, r = pair[bounds[c]:bounds[c + 1]], cell_row[bounds[c]:bounds[c + 1]]
            upper = maps[p, r, c][:, None] * u0 + maps[p, r, c + 1][:, None] * u1  # (Q, C)
            lower = maps[p, r + 1, c][:, None] * u0 + maps[p, r + 1, c + 1][:, None] * u1
            q, j = torch.nonzero(torch.maximum(upper, lower) > floor[p][:, None], as_tuple=True)
            found.append((p[q], r[q], cols[j], upper[q, j], lower[q, j]))
        if not found:
            empty = torch.zeros(0, dtype=torch.int64, device=maps.device)
            return empty, empty
        pair, cell_row, column, upper, lower = (torch.cat(parts) for parts in zip(*found))
        # stage 2, per cell row: every output row of the column
        order = torch.argsort(cell_row, stable=True)
        pair, cell_row, column, upper, lower = pair[order], cell_row[order], column[order], upper[order], lower[order]
        bounds = torch.searchsorted(cell_row, torch.arange(len(self.rows) + 1, device=maps.device)).tolist()
        found_pair, found_pixel = [], []
        for r, (rows, w0, w1) in enumerate(self.rows):
            lo, hi = bounds[r], bounds[r + 1]
            if lo == hi:
                continue
            values = upper[lo:hi, None] * w0 + lower[lo:hi, None] * w1  # (Z, R)
            z, i = torch.nonzero(values > threshold[pair[lo:hi]][:, None], as_tuple=True)
            found_pair.append(pair[lo:hi][z])
            found_pixel.append(rows[i] * self.size[1] + column[lo:hi][z])
        if not found_pair:
            empty = torch.zeros(0, dtype=torch.int64, device=maps.device)
            return empty, empty
        return torch.cat(found_pair), torch.cat(found_pixel)


def _padded_cells(axis: _Axis) -> tuple[torch.Tensor, torch.Tensor]:
    """Per cell, its output rows padded to the widest cell's count, (cells, span) int64, and their weights
    (cells, 2, span) float32: (w_low, w_high), NaN on padding (a NaN value is never above a threshold)."""
    count = torch.bincount(axis.low)
    start = torch.cumsum(count, 0) - count
    offset = torch.arange(int(count.max()), device=count.device)
    valid = offset < count[:, None]
    index = torch.where(valid, start[:, None] + offset, start[:, None])
    weights = torch.stack([axis.w_low[index], axis.w_high[index]], dim=1)
    return index, torch.where(valid[:, None], weights, torch.nan)


# --- pass 1: forward, running top-k and candidate maps ------------------------------------------


def _values_above(maps: torch.Tensor, unit: torch.Tensor, bound: torch.Tensor, units: int) -> torch.Tensor:
    """The values of ``maps`` (M, P) of units ``unit`` (M,, ascending) above their unit's ``bound``, as rows
    (units, most values of one unit), padded with -inf: what may still enter a unit's top-k."""
    positions = maps.shape[1]
    found = torch.nonzero((maps > bound.index_select(0, unit)[:, None]).flatten())[:, 0]
    values = maps.flatten().index_select(0, found)
    owner = unit.index_select(0, torch.div(found, positions, rounding_mode="floor"))  # ascending, as `unit`
    counts = torch.bincount(owner, minlength=units)
    slot = torch.arange(len(owner), device=maps.device) - (torch.cumsum(counts, 0) - counts).index_select(0, owner)
    width = max(1, int(counts.max()) if len(owner) else 1)
    rows = torch.full((units * width,), -torch.inf, device=maps.device)
    rows.index_copy_(0, owner * width + slot, values)
    return rows.view(units, width)


class _LayerStream:
    """Pass-1 state of one layer: an exact running top-k per unit and the activation maps that may still pass."""

    def __init__(self, layer: str, total_images: int, quantile: float, device: torch.device):
        self.layer, self.total_images, self.quantile, self.device = layer, total_images, quantile, device
        self.top: torch.Tensor | None = None
        self.k = 0
        self.count = 0
        self.spatial: tuple[int, int] | None = None
        self.kept: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []  # image, unit, max, map
        self.kept_size = 0
        self.pruned_size = 0

    def _start(self, activations: np.ndarray) -> None:
        if activations.ndim != 4:
            raise DissectionError(
                f"dissection.layers: layer {self.layer!r} gives activations of shape {tuple(activations.shape)}, "
                "without spatial dimensions; dissection needs convolutional feature maps (B, U, H, W): "
                "choose a convolutional layer"
            )
        units, height, width = activations.shape[1:]
        if units == 0 or height * width == 0:
            raise DissectionError(f"dissection.layers: layer {self.layer!r} has an empty output {activations.shape}")
        self.spatial = (height, width)
        self.count = self.total_images * height * width
        self.k = top_values_needed(self.count, self.quantile)
        self.top = torch.full((units, self.k), -torch.inf, device=self.device)

    def update(self, activations: np.ndarray, first_image: int) -> None:
        if self.top is None:
            self._start(activations)
        acts = torch.from_numpy(np.ascontiguousarray(activations, dtype=np.float32)).to(self.device)
        units, (height, width) = self.top.shape[0], self.spatial
        if acts.shape[1:] != (units, height, width):
            raise DissectionError(
                f"dissection.layers: layer {self.layer!r} changed shape from {(units, height, width)} "
                f"to {tuple(acts.shape[1:])} between batches; give concept images of one size"
            )
        flat = acts.view(len(acts), units, height * width)
        maxima = flat.amax(dim=2)  # (B, U)
        if torch.isnan(maxima).any():
            raise DissectionError(
                f"dissection: layer {self.layer!r} produced NaN activations; check the model and its input "
                "normalization (input.mean/std/range)"
            )
        # Only maps whose maximum beats the current k-th largest value can change the top-k or pass T_u.
        # Taken unit by unit (then _values_above needs no sort), with index_select rather than [i, j] indexing:
        # update() 0.14 -> 0.10 s on the demo CNN.
        bound = self.top.amin(dim=1)
        unit, image = torch.nonzero(maxima.T > bound[:, None], as_tuple=True)
        if not len(image):
            return
        pick = image * units + unit
        maps = flat.view(-1, height * width).index_select(0, pick)
        maxima = maxima.flatten().index_select(0, pick)
        if torch.isinf(bound).any():  # the top-k is still filling up: take every value of the batch
            entering = flat.transpose(0, 1).reshape(units, -1)
        else:
            entering = _values_above(maps, unit, bound, units)
        self.top = torch.cat([self.top, entering], dim=1).topk(self.k, dim=1, sorted=False).values
        keep = torch.nonzero(maxima > self.top.amin(dim=1).index_select(0, unit))[:, 0]
        if len(keep):
            self.kept.append((image.index_select(0, keep) + first_image, unit.index_select(0, keep),
                              maxima.index_select(0, keep), maps.index_select(0, keep)))
            self.kept_size += len(keep)
        if self.kept_size > 2 * self.pruned_size + 4096:
            self._prune(self.top.amin(dim=1))

    def _prune(self, bound: torch.Tensor) -> None:
        image, unit, maxima, maps = (torch.cat(parts) for parts in zip(*self.kept))
        keep = torch.nonzero(maxima > bound.index_select(0, unit))[:, 0]
        self.kept = [tuple(part.index_select(0, keep) for part in (image, unit, maxima, maps))]
        self.kept_size = self.pruned_size = len(keep)

    def finish(self) -> tuple[np.ndarray, _Candidates]:
        """The thresholds T_u and the maps that pass them, sorted by image."""
        thresholds = exact_quantile_threshold(self.top.cpu().numpy(), self.count, self.quantile)
        below = torch.from_numpy(float32_below(thresholds)).to(self.device)
        if self.kept:
            image, unit, maxima, maps = (torch.cat(parts) for parts in zip(*self.kept))
            keep = torch.nonzero(maxima > below.index_select(0, unit))[:, 0]
            image, unit, maps = (part.index_select(0, keep) for part in (image, unit, maps))
            order = torch.argsort(image, stable=True)
            image, unit, maps = (part.index_select(0, order) for part in (image, unit, maps))
        else:
            image = unit = torch.zeros(0, dtype=torch.int64, device=self.device)
            maps = torch.zeros((0, self.spatial[0] * self.spatial[1]), device=self.device)
        self.kept = []
        return thresholds, _Candidates(image, unit, maps.view(-1, *self.spatial), below)


@dataclass
class _Candidates:
    image: torch.Tensor  # (M,) concept-set position, ascending
    unit: torch.Tensor  # (M,)
    maps: torch.Tensor  # (M, h, w) raw activation maps whose maximum exceeds the unit's threshold
    threshold_below: torch.Tensor  # (U,) float32_below(T_u)


# --- pass 2: tally ------------------------------------------------------------------------------


class _Labels:
    """Dense label indexing (1..L, 0 = none), each label's primary category, and lookups for mask values."""

    def __init__(self, concepts: ConceptSet, device: torch.device):
        self.ids = np.array(sorted(concepts.labels), dtype=np.int64)
        self.categories = list(concepts.categories)
        self.size = len(self.ids) + 1
        dense = np.zeros(MAX_MASK_LABEL + 1, dtype=np.int64)
        small = self.ids <= MAX_MASK_LABEL
        dense[self.ids[small]] = np.arange(1, self.size)[small]
        self.mask_lookup = dense.astype(np.int32)  # label id -> dense index (numpy: used in the reader thread)
        self.ids_are_dense = bool(np.array_equal(self.ids, np.arange(1, self.size)))  # then a mask is its own index
        self.dense_of = {int(label): i + 1 for i, label in enumerate(self.ids)}
        labelcat = np.zeros((self.size, len(self.categories)), dtype=np.int64)
        for label, dense_index in self.dense_of.items():
            labelcat[dense_index, self.categories.index(concepts.label_category[label])] = 1
        self.labelcat = labelcat
        self.labelcat_t = torch.from_numpy(labelcat).to(device)


@dataclass
class _BatchLabels:
    """One batch's labels, dense: pixel layers of every pixel-level category stacked, whole-image labels one-hot;
    and the batch's share of the label totals G."""

    pixels: torch.Tensor | None  # (B, K, S) int32, K over all pixel-level categories' layers
    image_onehot: torch.Tensor  # (B, L+1) int64, 0/1
    image_category: torch.Tensor  # (B, C) bool: has a whole-image label of category k
    totals: torch.Tensor  # (L+1,) int64: pixels per label (sh * sw per image for a whole-image label), 0 for none


def _batch_labels(batch: ConceptBatch, labels: _Labels, mask_size: tuple[int, int]) -> dict[str, np.ndarray | None]:
    """The _BatchLabels of a batch, as numpy arrays, computed in the reader thread (numpy releases the GIL).
    Measured on the demo CNN: pass 2 0.24 -> 0.20 s with the masks already in memory, ~0.01 s from disk."""
    pixels = None
    if batch.pixel_labels:
        stacked = np.concatenate(list(batch.pixel_labels.values()), axis=1)
        stacked = stacked.reshape(len(batch), stacked.shape[1], -1)
        pixels = stacked if labels.ids_are_dense else labels.mask_lookup[stacked]
    onehot = np.zeros((len(batch), labels.size), dtype=np.int64)
    for per_image in batch.image_labels.values():
        for b, image_labels in enumerate(per_image):
            onehot[b, [labels.dense_of[label] for label in image_labels]] = 1
    totals = onehot.sum(axis=0) * (mask_size[0] * mask_size[1])
    if pixels is not None:
        totals += np.bincount(pixels.ravel(), minlength=labels.size)
    totals[0] = 0
    return {"pixels": pixels, "image_onehot": onehot, "image_category": onehot @ labels.labelcat > 0,
            "totals": totals}


def _to_device(arrays: dict[str, np.ndarray | None], device: torch.device) -> _BatchLabels:
    return _BatchLabels(**{name: None if array is None else torch.from_numpy(array).to(device)
                           for name, array in arrays.items()})


class _Tally:
    """NetDissect-Lite's counts for one layer: I (both), A per category (units_cat); G is shared (labels)."""

    def __init__(self, units: int, labels: _Labels, device: torch.device):
        self.both = torch.zeros((units, labels.size), dtype=torch.int64, device=device)
        self.units_cat = torch.zeros((units, len(labels.categories)), dtype=torch.int64, device=device)

    def add(self, candidates: _Candidates, start: int, stop: int, first_image: int, batch: _BatchLabels,
            labels: _Labels, active_pixels: _ActivePixels) -> None:
        pixels_per_map = active_pixels.size[0] * active_pixels.size[1]
        chunk = max(1, UPSAMPLE_CHUNK // pixels_per_map) if not active_pixels.sparse else 1 << 16
        for lo in range(start, stop, chunk):
            hi = min(lo + chunk, stop)
            unit = candidates.unit[lo:hi]
            image = candidates.image[lo:hi] - first_image
            pair, pixel = active_pixels(candidates.maps[lo:hi], candidates.threshold_below[unit])
            activated = torch.bincount(pair, minlength=hi - lo)  # (m,) activated pixels per map
            if batch.pixels is not None:
                _, layers, area = batch.pixels.shape
                at = (image.index_select(0, pair) * (layers * area) + pixel)[:, None] \
                    + torch.arange(0, layers * area, area, device=pixel.device)
                hit = batch.pixels.flatten().take(at)  # (P, K) dense labels under activated pixels
                index = (pair[:, None] * labels.size + hit).flatten()
                counts = torch.bincount(index, minlength=(hi - lo) * labels.size).view(hi - lo, labels.size)
                counts[:, 0] = 0
                touched = (counts > 0).long() @ labels.labelcat_t > 0  # (m, C)
            else:
                counts = torch.zeros((hi - lo, labels.size), dtype=torch.int64, device=unit.device)
                touched = torch.zeros((hi - lo, len(labels.categories)), dtype=torch.bool, device=unit.device)
            counts += batch.image_onehot[image] * activated[:, None]
            touched |= batch.image_category[image]
            self.both.index_add_(0, unit, counts)
            self.units_cat.index_add_(0, unit, touched.long() * activated[:, None])


# --- the op -------------------------------------------------------------------------------------


def _prefetched(batches: Iterator[_Item], depth: int = 2) -> Iterator[_Item]:
    """Read the next batches in a background thread while the model or the tally works on the current one
    (file reading, PNG decoding and numpy release the GIL for much of their time). Errors surface in the caller."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for batch in batches:
                while not stop.is_set():
                    try:
                        slots.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            item = done
        except BaseException as error:  # handed to the consumer, which raises it
            item = error
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    worker = threading.Thread(target=produce, name="concept-reader", daemon=True)
    worker.start()
    try:
        while True:
            item = slots.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()



def _check(session, concepts: ConceptSet, layers: Sequence[str], quantile: float, batch_size: int,
           input_shape) -> None:
    if not 0.0 < quantile < 0.5:
        raise DissectionError(
            f"dissection.quantile={quantile} must lie strictly between 0 and 0.5: it is the fraction of each "
            "unit's activations counted as active; NetDissect uses 0.005"
        )
    if batch_size < 1:
        raise DissectionError(f"dissection batch_size={batch_size}; give a batch size of at least 1")
    if not layers:
        raise DissectionError("dissection.layers is empty; name at least one convolutional layer to dissect")
    if len(set(layers)) != len(layers):
        raise DissectionError(f"dissection.layers {list(layers)} names a layer twice; name each once")
    outputs = [output.name for output in session.get_outputs()]
    unknown = [layer for layer in layers if layer not in outputs]
    if unknown:
        raise DissectionError(
            f"dissection.layers: {unknown} not among the model's outputs {outputs[1:]}; dissect an audited layer "
            "(model.layers) or export the model with these layers"
        )
    if len(concepts) == 0 or not concepts.labels:
        raise DissectionError("dissection.concepts: the concept set holds no images or no labels; give a Broden "
                              "folder with images and labelled masks, or builtin:concepts")
    if len(tuple(input_shape)) != 3:
        raise DissectionError(
            f"model.input.shape {list(input_shape)}: dissection needs an image model with input [C, H, W]"
        )


@contextlib.contextmanager
def _one_torch_thread(device: torch.device) -> Iterator[None]:
    """The bookkeeping is many small tensor operations between model calls: on CPU, torch's intra-op thread pool
    costs more in synchronisation than it gains, and fights the model's own threads for the cores (measured on
    2 shared cores: 1.3 s with one thread, 17 s with two, for the demo CNN on 1000 images). The caller's setting
    is restored afterwards; other threads keep theirs."""
    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def dissect(
    session,
    concepts: ConceptSet,
    layers: Sequence[str],
    *,
    input_shape: Sequence[int],
    value_range: tuple[float, float] = (0.0, 1.0),
    mean: list[float] | None = None,
    std: list[float] | None = None,
    quantile: float = DEFAULT_QUANTILE,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
    device: str | None = None,
) -> dict[str, DissectionResult]:
    """Dissect ``layers`` (outputs of the ONNX Runtime ``session``) on ``concepts``; one result per layer.

    Concept images (RGB in [0, 1]) become model input through ``datasets.to_model_input(input_shape, value_range,
    mean, std)``, so a grayscale or differently sized model is dissected on the same concept set. ``progress``
    is called with (batches done, batches in all) over both passes. ``device`` runs the tallies there (default:
    CUDA when torch sees it, else CPU); the model runs wherever its session runs.
    """
    _check(session, concepts, layers, quantile, batch_size, input_shape)
    target = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    with _one_torch_thread(target), torch.no_grad():
        return _dissect(session, concepts, list(layers), tuple(input_shape), tuple(value_range), mean, std,
                        quantile, batch_size, progress, target)


def _dissect(session, concepts: ConceptSet, layers: list[str], input_shape: tuple[int, ...],
             value_range: tuple[float, float], mean, std, quantile: float, batch_size: int,
             progress: Callable[[int, int], None] | None, target: torch.device) -> dict[str, DissectionResult]:
    steps = 2 * -(-len(concepts) // batch_size)
    report = (lambda done: progress(done, steps)) if progress is not None else (lambda done: None)
    streams = _pass_one(session, concepts, layers, input_shape, value_range, mean, std, quantile, batch_size,
                        target, report)
    labels = _Labels(concepts, target)
    finished = {layer: stream.finish() for layer, stream in streams.items()}
    tallies, totals = _pass_two(concepts, streams, finished, labels, batch_size, target, report, steps // 2)
    results = {}
    for layer, (thresholds, _) in finished.items():
        both = tallies[layer].both.cpu().numpy().astype(np.float64)
        activation = tallies[layer].units_cat.cpu().numpy().astype(np.float64) @ labels.labelcat.T
        iou = (both / (activation + totals[None, :] - both + IOU_EPSILON))[:, 1:]
        best = iou.argmax(axis=1)
        results[layer] = DissectionResult(
            layer=layer, thresholds=thresholds, iou=iou, label_ids=labels.ids.copy(),
            best_label=labels.ids[best], best_iou=iou[np.arange(len(iou)), best],
        )
    return results


def _pass_one(session, concepts: ConceptSet, layers: list[str], input_shape, value_range, mean, std,
              quantile: float, batch_size: int, target: torch.device, report) -> dict[str, _LayerStream]:
    """Images through the model; per layer a running top-k and the maps that may pass their threshold."""
    input_name = session.get_inputs()[0].name
    streams = {layer: _LayerStream(layer, len(concepts), quantile, target) for layer in layers}

    def model_inputs() -> Iterator[tuple[ConceptBatch, np.ndarray]]:
        for batch in concepts.batches(batch_size, masks=False):
            samples = Samples(ids=[str(i) for i in batch.indices], x=batch.images, labels=None, masks=None,
                              class_names=None)
            yield batch, to_model_input(samples, input_shape, value_range, mean, std)

    # the reader thread also prepares the model input (numpy, mostly without the GIL), 0.1 s of work on 1000
    # 64x64 images that the model's thread no longer does (measured: pass 1 0.47 -> 0.44 s on the demo CNN)
    with contextlib.closing(_prefetched(model_inputs())) as batches:
        for step, (batch, x) in enumerate(batches, start=1):
            for layer, activations in zip(layers, session.run(layers, {input_name: x})):
                streams[layer].update(activations, int(batch.indices[0]))
            report(step)
    return streams


def _pass_two(concepts: ConceptSet, streams: dict[str, _LayerStream], finished, labels: _Labels, batch_size: int,
              target: torch.device, report, steps_before: int) -> tuple[dict[str, _Tally], np.ndarray]:
    """Masks only: the tallies of every layer's kept maps, and the label totals G."""
    tallies = {layer: _Tally(len(thresholds), labels, target) for layer, (thresholds, _) in finished.items()}
    evaluators = {layer: _ActivePixels(streams[layer].spatial, concepts.mask_size, target) for layer in finished}
    totals = torch.zeros(labels.size, dtype=torch.int64, device=target)
    prepared = ((batch, _batch_labels(batch, labels, concepts.mask_size))
                for batch in concepts.batches(batch_size, images=False))
    with contextlib.closing(_prefetched(prepared)) as batches:
        for step, (batch, arrays) in enumerate(batches, start=steps_before + 1):
            first, last = int(batch.indices[0]), int(batch.indices[-1]) + 1
            batch_labels = _to_device(arrays, target)
            totals += batch_labels.totals
            for layer, (_, candidates) in finished.items():
                bounds = torch.tensor([first, last], device=target)
                start, stop = torch.searchsorted(candidates.image, bounds).tolist()
                if stop > start:
                    tallies[layer].add(candidates, start, stop, first, batch_labels, labels, evaluators[layer])
            report(step)
    return tallies, totals.cpu().numpy().astype(np.float64)


# --- the random-weights baseline ----------------------------------------------------------------


def random_init_copy(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A copy of ``model`` with every module's ``reset_parameters()`` called in module order under ``seed``.

    Batch-norm running statistics are reset too (their reset_parameters does it). Initialised on the CPU and
    moved back, so the baseline does not depend on the device; the global RNG state is left as it was.
    Parameters of modules without reset_parameters keep their values, with a warning naming the modules.
    """
    devices = {parameter.device for parameter in model.parameters()}
    baseline = copy.deepcopy(model).cpu()
    untouched = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, module in baseline.named_modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
            elif any(True for _ in module.parameters(recurse=False)):
                untouched.append(name or type(module).__name__)
            if isinstance(module, torch.nn.modules.batchnorm._NormBase):
                module.reset_running_stats()
    if untouched:
        warnings.warn(f"random_init_copy: modules {untouched} have no reset_parameters(); their parameters keep "
                      "their trained values in the random baseline", stacklevel=2)
    return baseline.to(devices.pop()) if len(devices) == 1 else baseline


# --- tables -------------------------------------------------------------------------------------


def detectors(result: DissectionResult, concepts: ConceptSet,
              iou_threshold: float = DEFAULT_IOU_THRESHOLD) -> pd.DataFrame:
    """Units table, one row per unit: layer, unit, concept (best label's name), category, iou, threshold,
    is_detector (iou >= iou_threshold). A unit that never fires has iou 0 and, as in NetDissect, the first label."""
    return pd.DataFrame({
        "layer": pd.Series([result.layer] * len(result.best_label), dtype="string"),
        "unit": np.arange(len(result.best_label), dtype=np.int64),
        "concept": pd.Series([concepts.labels[int(label)] for label in result.best_label], dtype="string"),
        "category": pd.Series([concepts.label_category[int(label)] for label in result.best_label], dtype="string"),
        "iou": result.best_iou.astype(np.float64),
        "threshold": result.thresholds.astype(np.float64),
        "is_detector": result.best_iou >= iou_threshold,
    })


def concept_tally(result: DissectionResult, concepts: ConceptSet,
                  iou_floor: float = DEFAULT_TALLY_FLOOR) -> pd.DataFrame:
    """Every (unit, concept) pair with IoU >= iou_floor: layer, unit, concept, category, iou; by unit, best first."""
    unit, column = np.nonzero(result.iou >= iou_floor)
    label = result.label_ids[column]
    table = pd.DataFrame({
        "layer": pd.Series([result.layer] * len(unit), dtype="string"),
        "unit": unit.astype(np.int64),
        "concept": pd.Series([concepts.labels[int(i)] for i in label], dtype="string"),
        "category": pd.Series([concepts.label_category[int(i)] for i in label], dtype="string"),
        "iou": result.iou[unit, column].astype(np.float64),
    })
    return table.sort_values(["unit", "iou"], ascending=[True, False], kind="stable").reset_index(drop=True)


def detector_summary(units: pd.DataFrame, concepts: ConceptSet) -> pd.DataFrame:
    """Per (layer, category) of the units table: detectors (units that are detectors of a concept of that
    category) and unique_concepts (distinct concepts they detect); every category appears, with 0 if need be."""
    rows = []
    for layer in units["layer"].unique():
        of_layer = units[(units["layer"] == layer) & units["is_detector"]]
        for category in concepts.categories:
            found = of_layer[of_layer["category"] == category]
            rows.append({"layer": layer, "category": category, "detectors": len(found),
                         "unique_concepts": found["concept"].nunique()})
    return pd.DataFrame({
        "layer": pd.Series([row["layer"] for row in rows], dtype="string"),
        "category": pd.Series([row["category"] for row in rows], dtype="string"),
        "detectors": np.array([row["detectors"] for row in rows], dtype=np.int64),
        "unique_concepts": np.array([row["unique_concepts"] for row in rows], dtype=np.int64),
    })


def results_tables(results: Mapping[str, DissectionResult], concepts: ConceptSet,
                   iou_threshold: float = DEFAULT_IOU_THRESHOLD,
                   iou_floor: float = DEFAULT_TALLY_FLOOR) -> dict[str, pd.DataFrame]:
    """The three tables over all layers: ``units``, ``tally`` and ``summary``."""
    units = pd.concat([detectors(r, concepts, iou_threshold) for r in results.values()], ignore_index=True)
    tally = pd.concat([concept_tally(r, concepts, iou_floor) for r in results.values()], ignore_index=True)
    return {"units": units, "tally": tally, "summary": detector_summary(units, concepts)}
