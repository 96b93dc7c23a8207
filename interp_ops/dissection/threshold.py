"""Step 1, the threshold: T_u is the ``1 - quantile`` quantile of all of unit u's raw activation values (every
image, every spatial position, before any upsampling), by numpy's default ("linear") rule. With the n values
sorted ascending as x_0..x_{n-1} and position = (n - 1) * (1 - quantile),
T_u = lerp(x_floor(position), x_floor(position)+1, position - floor(position)): the same value as
``numpy.quantile(values, 1 - quantile)``, exactly, in float64, from an exact running top-k of the
``n - floor(position)`` largest values per unit, so that the activations never have to be held in memory.

While the running top-k rises, every activation map whose maximum exceeds the unit's current k-th largest value
is kept (raw, at layer resolution) and the rest dropped. The k-th largest only rises, and T_u is at least the
final k-th largest, so every map that can exceed T_u once upsampled is kept. Kept maps go to a file on disk
(``MapSpill``), a batch of images at a time, and pass 2 reads them back the same way: about k maps per unit pass
T_u, and k grows with the number of images, so held in memory they made the pass's memory grow with the concept
set (2.1 GB for 10,000 images of the demo CNN, 1.0 GB for 1,000).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from interp_ops.concepts import ConceptBatch
from interp_ops.dissection.prefetch import prefetched
from interp_ops.dissection.result import DissectionError


def _quantile_position(count: int, quantile: float) -> tuple[int, float]:
    """(floor(position), position - floor(position)) for position = (count - 1) * (1 - quantile), as numpy's
    linear method computes it."""
    position = (count - 1) * (1.0 - quantile)
    below = int(np.floor(position))
    if position >= count - 1:
        return count - 1, 0.0
    return below, position - below


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
    below, fraction = _quantile_position(count, quantile)
    descending = np.sort(np.asarray(top_values, dtype=np.float64), axis=1)[:, ::-1]
    rank_below = count - 1 - below  # 0-based rank from the top of sorted position `below`
    at_below = descending[:, rank_below]
    at_above = descending[:, max(rank_below - 1, 0)]
    step = at_above - at_below
    if fraction >= 0.5:
        return at_above - step * (1.0 - fraction)
    return at_below + step * fraction


def float32_below(threshold: np.ndarray) -> np.ndarray:
    """The largest float32 <= each float64 threshold: for float32 x, ``x > t`` exactly when ``x > float32_below(t)``."""
    rounded = np.asarray(threshold, dtype=np.float64).astype(np.float32)
    too_big = rounded.astype(np.float64) > threshold
    rounded[too_big] = np.nextafter(rounded[too_big], np.float32(-np.inf))
    return rounded


class MapSpill:
    """Pass 1's kept maps on disk, in blocks of images in ascending order, read back a block range at a time.

    A block is what one batch kept: its images (int64), units (int64), map maxima and maps (float32), written as
    raw bytes; the file is removed when closed."""

    def __init__(self, map_size: tuple[int, int]):
        self.map_size = map_size
        self.file = tempfile.TemporaryFile(prefix="interp-audit-dissection-")
        self.blocks: list[tuple[int, int, int, int]] = []  # first image, last image + 1, offset, maps

    def append(self, image: torch.Tensor, unit: torch.Tensor, maxima: torch.Tensor, maps: torch.Tensor) -> None:
        offset = self.file.seek(0, 2)
        for part, dtype in ((image, np.int64), (unit, np.int64), (maxima, np.float32), (maps, np.float32)):
            self.file.write(np.ascontiguousarray(part.cpu().numpy(), dtype=dtype).tobytes())
        self.blocks.append((int(image.min()), int(image.max()) + 1, offset, len(image)))

    def read(self, first: int, last: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every kept map of images ``first`` to ``last - 1``: images, units, maxima, maps (M, h * w)."""
        pixels = self.map_size[0] * self.map_size[1]
        parts = []
        for block_first, block_last, offset, count in self.blocks:
            if block_last <= first or block_first >= last:
                continue
            self.file.seek(offset)
            image = np.fromfile(self.file, np.int64, count)
            unit = np.fromfile(self.file, np.int64, count)
            maxima = np.fromfile(self.file, np.float32, count)
            maps = np.fromfile(self.file, np.float32, count * pixels).reshape(count, pixels)
            inside = (image >= first) & (image < last)
            parts.append((image[inside], unit[inside], maxima[inside], maps[inside]))
        if not parts:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, np.zeros(0, dtype=np.float32), np.zeros((0, pixels), dtype=np.float32)
        return tuple(np.concatenate(column) for column in zip(*parts))

    def close(self) -> None:
        self.file.close()


@dataclass
class ThresholdedMaps:
    """One layer after pass 1: its thresholds, and the raw activation maps that may exceed them, on disk."""

    thresholds: np.ndarray  # (U,) float64 T_u
    threshold_below: torch.Tensor  # (U,) float32_below(T_u)
    spill: MapSpill
    device: torch.device

    @property
    def map_size(self) -> tuple[int, int]:
        return self.spill.map_size

    def of_images(self, first: int, last: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images, units and maps (M, h, w) of the maps of images ``first`` to ``last - 1`` whose maximum exceeds
        their unit's threshold: those that can have active pixels."""
        image, unit, maxima, maps = (torch.from_numpy(part).to(self.device) for part in self.spill.read(first, last))
        keep = torch.nonzero(maxima > self.threshold_below.index_select(0, unit))[:, 0]
        image, unit, maps = (part.index_select(0, keep) for part in (image, unit, maps))
        return image, unit, maps.view(-1, *self.map_size)


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


class RunningThreshold:
    """Pass-1 state of one layer: an exact running top-k per unit and the activation maps that may still pass."""

    def __init__(self, layer: str, total_images: int, quantile: float, device: torch.device):
        self.layer, self.total_images, self.quantile, self.device = layer, total_images, quantile, device
        self.largest: torch.Tensor | None = None  # (U, k) the k largest values seen per unit, unordered
        self.k = 0
        self.count = 0
        self.map_size: tuple[int, int] | None = None
        self.spill: MapSpill | None = None

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
        self.map_size = (height, width)
        self.spill = MapSpill(self.map_size)
        self.count = self.total_images * height * width
        self.k = top_values_needed(self.count, self.quantile)
        self.largest = torch.full((units, self.k), -torch.inf, device=self.device)

    def update(self, activations: np.ndarray, first_image: int) -> None:
        if self.largest is None:
            self._start(activations)
        batch = torch.from_numpy(np.ascontiguousarray(activations, dtype=np.float32)).to(self.device)
        units, (height, width) = self.largest.shape[0], self.map_size
        if batch.shape[1:] != (units, height, width):
            raise DissectionError(
                f"dissection.layers: layer {self.layer!r} changed shape from {(units, height, width)} "
                f"to {tuple(batch.shape[1:])} between batches; give concept images of one size"
            )
        flat = batch.view(len(batch), units, height * width)
        maxima = flat.amax(dim=2)  # (B, U)
        if torch.isnan(maxima).any():
            raise DissectionError(
                f"dissection: layer {self.layer!r} produced NaN activations; check the model and its input "
                "normalization (input.mean/std/range)"
            )
        # Only maps whose maximum beats the current k-th largest value can change the top-k or pass T_u. They are
        # taken unit by unit, so that _values_above needs no sort, and gathered with index_select, cheaper here
        # than [i, j] indexing.
        bound = self.largest.amin(dim=1)
        unit, image = torch.nonzero(maxima.T > bound[:, None], as_tuple=True)
        if not len(image):
            return
        flat_index = image * units + unit
        maps = flat.view(-1, height * width).index_select(0, flat_index)
        maxima = maxima.flatten().index_select(0, flat_index)
        if torch.isinf(bound).any():  # the top-k is still filling up: take every value of the batch
            entering = flat.transpose(0, 1).reshape(units, -1)
        else:
            entering = _values_above(maps, unit, bound, units)
        self.largest = torch.cat([self.largest, entering], dim=1).topk(self.k, dim=1, sorted=False).values
        keep = torch.nonzero(maxima > self.largest.amin(dim=1).index_select(0, unit))[:, 0]
        if len(keep):
            self.spill.append(*(part.index_select(0, keep) for part in (image + first_image, unit, maxima, maps)))

    def finish(self) -> ThresholdedMaps:
        """The thresholds T_u, with the kept maps that may pass them."""
        thresholds = exact_quantile_threshold(self.largest.cpu().numpy(), self.count, self.quantile)
        below = torch.from_numpy(float32_below(thresholds)).to(self.device)
        return ThresholdedMaps(thresholds, below, self.spill, self.device)


def threshold_pass(
    session,
    model_inputs: Iterator[tuple[ConceptBatch, np.ndarray]],
    layers: Sequence[str],
    total_images: int,
    quantile: float,
    device: torch.device,
    report: Callable[[int], None],
) -> dict[str, ThresholdedMaps]:
    """Pass 1: the model inputs through the ONNX Runtime ``session``; per layer, its thresholds and kept maps.

    ``model_inputs`` is read in a background thread (see ``prefetch``): preparing the next batch (reading,
    decoding, ``to_model_input``) then overlaps the model's work on this one. ``report(step)`` after each batch.
    """
    input_name = session.get_inputs()[0].name
    running = {layer: RunningThreshold(layer, total_images, quantile, device) for layer in layers}
    with contextlib.closing(prefetched(model_inputs)) as batches:
        for step, (batch, model_input) in enumerate(batches, start=1):
            for layer, activations in zip(layers, session.run(list(layers), {input_name: model_input})):
                running[layer].update(activations, int(batch.indices[0]))
            report(step)
    return {layer: layer_threshold.finish() for layer, layer_threshold in running.items()}
