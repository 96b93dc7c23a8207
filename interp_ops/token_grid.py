"""A transformer layer's tokens as a map: the layout a spec declares (``tokens: {grid: [rows, cols], skip}``) and
the reshape every method reads it through. Free of torch, so the spec can name it without loading torch."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


class TokenGridError(ValueError):
    """A layer's output does not lie as its token grid says; the message shows the shape and a grid that fits."""


@dataclass(frozen=True)
class TokenGrid:
    """How a layer's tokens lie on the image: ``skip`` leading tokens that are no patch (a class token), then
    ``rows x cols`` patch tokens, row by row."""

    rows: int
    cols: int
    skip: int = 0

    def map_shape(self, layer: str, shape: Sequence[int]) -> tuple[int, int, int]:
        """The ``(dim, rows, cols)`` map of one sample whose tokens have ``shape`` ``(tokens, dim)``."""
        shape = tuple(shape)
        if len(shape) != 2:
            raise TokenGridError(
                f"{layer!r} outputs {list(shape)} per sample, not [tokens, dim]: declare tokens only for a "
                "transformer layer's output"
            )
        if shape[0] - self.skip != self.rows * self.cols:
            raise TokenGridError(
                f"[{self.rows}, {self.cols}] is {self.rows * self.cols} patch tokens, but {layer!r} outputs "
                f"{shape[0]} tokens of dim {shape[1]} and skip is {self.skip} ({shape[0] - self.skip} left); "
                f"{suggested_grid(shape[0])}"
            )
        return shape[1], self.rows, self.cols

    def as_map(self, layer: str, tokens):
        """``[batch, tokens, dim]`` -> ``[batch, dim, rows, cols]``; traced by the ONNX export as it is."""
        if not hasattr(tokens, "shape"):
            raise TokenGridError(f"{layer!r} outputs {type(tokens).__name__}, not a tensor of tokens")
        dim = self.map_shape(layer, tokens.shape[1:])[0]
        return tokens[:, self.skip :, :].reshape(-1, self.rows, self.cols, dim).permute(0, 3, 1, 2)


def suggested_grid(tokens: int) -> str:
    """A square grid that fits ``tokens`` after skipping none or a few leading tokens, as a hint."""
    for skip in range(0, 9):
        side = math.isqrt(tokens - skip) if tokens > skip else 0
        if side > 1 and side * side == tokens - skip:
            return f"for a square grid: tokens: {{grid: [{side}, {side}], skip: {skip}}}"
    return "give grid: [rows, cols] with rows x cols + skip equal to the number of tokens"
