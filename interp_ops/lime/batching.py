"""The model side of LIME: every perturbed input of a call goes through the model in full batches.

A sample's perturbations are rarely a multiple of the batch size, so batches mix rows of several samples (and
of several seeds), and inputs are composed straight into the one batch buffer rather than built per sample and
copied: no batch runs half empty and no perturbed copy of the data is ever held whole.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from interp_ops.lime.errors import LimeInputError

Predict = Callable[[np.ndarray], np.ndarray]
"""Model-input batch (B, *input_shape) float32 -> class probabilities (B, K)."""


class ModelRows(Protocol):
    """Model inputs for a block of rows, written on demand into the caller's batch buffer."""

    rows: int

    def compose(self, start: int, stop: int, out: np.ndarray) -> None:
        """Write the model inputs of rows start..stop-1 into out (stop - start, *input_shape), float32."""


@dataclass(frozen=True)
class GivenRows:
    """Rows that are already model inputs (the samples themselves, perturbed table rows)."""

    values: np.ndarray

    @property
    def rows(self) -> int:
        return len(self.values)

    def compose(self, start: int, stop: int, out: np.ndarray) -> None:
        out[...] = self.values[start:stop]


def predict_in_batches(
    predict: Predict, blocks: Sequence[ModelRows], input_shape: tuple[int, ...], batch_size: int
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
        for (block, _rows), part in zip(pending, np.split(probabilities, np.cumsum([r for _, r in pending])[:-1])):
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
