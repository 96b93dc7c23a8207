"""Dataset examples beside each render (Olah et al. 2017): the rows of a data set that drive each unit highest.

The activations come from the audit's ONNX bundle, batch by batch, reduced per unit exactly as the render's
objective reduces them, and folded into a running top-k: memory is O(units x (k + batch)), never O(rows).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from interp_ops.actmax.objectives import centre
from interp_ops.actmax.render import ActmaxError


@dataclass
class Exemplars:
    """Per unit, the k rows of x with the highest activation, best first; ties go to the lower row index."""

    layer: str
    units: list[int]
    indices: np.ndarray  # (U, k) int64 row indices into x
    activations: np.ndarray  # (U, k) float32, descending
    dataset_max: np.ndarray  # (U,) float32 == activations[:, 0]


class RunningTopK:
    """The k largest values in each row of a stream of (U, B) blocks, with their column positions in the stream."""

    def __init__(self, rows: int, k: int):
        self.k = k
        self.values = np.empty((rows, 0), dtype=np.float32)
        self.indices = np.empty((rows, 0), dtype=np.int64)

    def update(self, values: np.ndarray, indices: np.ndarray) -> None:
        values = np.concatenate([self.values, values.astype(np.float32, copy=False)], axis=1)
        indices = np.concatenate([self.indices, np.broadcast_to(indices, (len(values), len(indices)))], axis=1)
        order = np.lexsort((indices, -values), axis=1)[:, : self.k]  # highest value first, then lowest index
        self.values = np.take_along_axis(values, order, axis=1)
        self.indices = np.take_along_axis(indices, order, axis=1)


def unit_values(maps: np.ndarray, units: np.ndarray, objective: str) -> np.ndarray:
    """(N, U) activations of the units in layer outputs (N, K, h, w) or (N, K), reduced as the objective does."""
    if maps.ndim == 2:
        return maps[:, units]
    if objective == "channel":
        return maps[:, units].mean(axis=(2, 3))
    row, column = centre(*maps.shape[2:])
    return maps[:, units, row, column]


REDUCTIONS = ("channel", "neuron")


def _check(
    session,
    x: np.ndarray,
    layer_outputs: Sequence[str],
    units: dict[str, Sequence[int]],
    k: int,
    objective: str,
    batch_size: int,
) -> None:
    if objective not in REDUCTIONS:
        raise ActmaxError(f"objective: unknown objective {objective!r}; use one of {', '.join(REDUCTIONS)}")
    for field, value in (("k", k), ("batch_size", batch_size)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ActmaxError(f"{field}: {value!r} must be a whole number >= 1")
    if len(x) == 0:
        raise ActmaxError("x: no rows; give at least one model input")
    available = [out.name for out in session.get_outputs()]
    missing = [layer for layer in layer_outputs if layer not in available]
    if missing:
        raise ActmaxError(
            f"layer_outputs: {missing} are not outputs of the ONNX session, whose outputs are "
            f"{available}; export the model with these layers (onnx_bundle.export_torch)"
        )
    extra = [layer for layer in units if layer not in layer_outputs]
    if extra:
        raise ActmaxError(f"units: given for {extra}, which are not in layer_outputs {list(layer_outputs)}")


def top_exemplars(
    session,
    x: np.ndarray,
    layer_outputs: Sequence[str],
    units: dict[str, Sequence[int]],
    *,
    k: int = 9,
    objective: str = "channel",
    batch_size: int = 256,
) -> dict[str, Exemplars]:
    """Per layer, the top-k rows of model inputs x (N, ...) for each unit, through an ONNX Runtime session whose
    output names include the layer names (as onnx_bundle.export_torch writes them).

    Reduction as the objective: "channel" = spatial mean, "neuron" = the map's centre. A layer missing from
    `units` gets all its units. k larger than N gives N per unit. The session runs batch by batch and is asked
    only for these layers.
    """
    _check(session, x, layer_outputs, units, k, objective, batch_size)
    layer_outputs = list(layer_outputs)
    input_name = session.get_inputs()[0].name
    chosen: dict[str, np.ndarray] = {}
    tops: dict[str, RunningTopK] = {}
    for start in range(0, len(x), batch_size):
        batch = np.ascontiguousarray(x[start : start + batch_size], dtype=np.float32)
        rows = np.arange(start, start + len(batch), dtype=np.int64)
        for layer, maps in zip(layer_outputs, session.run(layer_outputs, {input_name: batch})):
            if layer not in tops:
                chosen[layer] = _units_of(layer, maps, units.get(layer))
                tops[layer] = RunningTopK(len(chosen[layer]), min(k, len(x)))
            tops[layer].update(unit_values(maps, chosen[layer], objective).T, rows)
    return {
        layer: Exemplars(
            layer=layer,
            units=chosen[layer].tolist(),
            indices=top.indices,
            activations=top.values,
            dataset_max=top.values[:, 0].copy(),
        )
        for layer, top in tops.items()
    }


def _units_of(layer: str, maps: np.ndarray, requested: Sequence[int] | None) -> np.ndarray:
    if maps.ndim not in (2, 4):
        raise ActmaxError(f"layer_outputs: {layer!r} has shape {maps.shape}; exemplars need (N, K) or (N, K, H, W)")
    count = maps.shape[1]
    if requested is None:
        return np.arange(count, dtype=np.int64)
    chosen = np.asarray([int(u) for u in requested], dtype=np.int64)
    outside = sorted({int(u) for u in chosen if not 0 <= u < count})
    if outside:
        raise ActmaxError(
            f"units: {outside} are out of range for layer {layer!r}, which has {count} units (0..{count - 1})"
        )
    return chosen
