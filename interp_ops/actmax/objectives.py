"""What a render maximises: small value objects that add, subtract and scale like numbers.

``channel("features.8", 5) - 0.5 * neuron("features.8", 5)`` reads like the maths and describes itself. An
objective gives one value per batch element, so elements stay independent: the renderer maximises their sum,
and Adam, being elementwise, then moves each element as if it were optimised alone. A unit argument may be one
int for the whole batch or a (B,) tensor with each element's own unit, which is how one batch renders many units.
Each objective also names the layers it reads, and the renderer hooks only those.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

Unit = int | Tensor
Activations = Mapping[str, Tensor]  # layer name -> (B, K, h, w) maps; (B, K) layers come as (B, K, 1, 1)


class Objective:
    """Per-element values (B,) of the hooked layers' activations, with a description of what they measure."""

    def __init__(self, value: Callable[[Activations], Tensor], description: str, layers: frozenset[str]):
        self.value = value
        self.description = description
        self.layers = layers

    def __call__(self, activations: Activations) -> Tensor:
        return self.value(activations)

    def __repr__(self) -> str:
        return self.description

    def __add__(self, other: Objective | float) -> Objective:
        if isinstance(other, Objective):
            return Objective(lambda acts: self(acts) + other(acts), f"{self} + {other}", self.layers | other.layers)
        return Objective(lambda acts: self(acts) + other, f"{self} + {other:g}", self.layers)

    __radd__ = __add__

    def __neg__(self) -> Objective:
        return Objective(lambda acts: -self(acts), f"-{_grouped(self)}", self.layers)

    def __sub__(self, other: Objective | float) -> Objective:
        if isinstance(other, Objective):
            return Objective(
                lambda acts: self(acts) - other(acts), f"{self} - {_grouped(other)}", self.layers | other.layers
            )
        return Objective(lambda acts: self(acts) - other, f"{self} - {other:g}", self.layers)

    def __mul__(self, factor: float) -> Objective:
        if not isinstance(factor, (int, float)):
            return NotImplemented
        return Objective(lambda acts: factor * self(acts), f"{factor:g} * {_grouped(self)}", self.layers)

    __rmul__ = __mul__

    def __truediv__(self, divisor: float) -> Objective:
        if not isinstance(divisor, (int, float)):
            return NotImplemented
        return Objective(lambda acts: self(acts) / divisor, f"{_grouped(self)} / {divisor:g}", self.layers)


def _grouped(objective: Objective) -> str:
    """The description, in parentheses where it is a sum, difference, product, quotient or negation."""
    text = objective.description
    compound = text.startswith("-") or any(op in text for op in (" + ", " - ", " * ", " / "))
    return f"({text})" if compound else text


def _arg_text(value) -> str:
    if isinstance(value, Tensor):
        return str(value.tolist()) if value.numel() <= 8 else f"<{value.numel()} units>"
    return str(value)


def described(build: Callable[..., Callable[[Activations], Tensor]]) -> Callable[..., Objective]:
    """Turn `build(layer, *args) -> value function` into a constructor of Objectives named `build(layer, args)`."""

    @functools.wraps(build)
    def make(layer: str, *args) -> Objective:
        text = ", ".join(_arg_text(arg) for arg in (layer, *args))
        return Objective(build(layer, *args), f"{build.__name__}({text})", frozenset([layer]))

    return make


def _unit_maps(maps: Tensor, unit: Unit) -> Tensor:
    """(B, h, w): each element's map of its unit."""
    if isinstance(unit, Tensor):
        return maps[torch.arange(len(maps), device=maps.device), unit.to(maps.device)]
    return maps[:, unit]


def centre(height: int, width: int) -> tuple[int, int]:
    """The centre position; for even sizes the lower right of the middle four, as Lucent chooses."""
    return height // 2, width // 2


@described
def channel(layer: str, unit: Unit) -> Callable[[Activations], Tensor]:
    """Mean of the unit's map over space: what the unit responds to wherever it appears."""
    return lambda acts: _unit_maps(acts[layer], unit).mean(dim=(1, 2))


@described
def neuron(layer: str, unit: Unit) -> Callable[[Activations], Tensor]:
    """The unit at the centre of its map: what one receptive field responds to."""

    def value(acts: Activations) -> Tensor:
        maps = _unit_maps(acts[layer], unit)
        row, column = centre(*maps.shape[1:])
        return maps[:, row, column]

    return value


OBJECTIVES = {"channel": channel, "neuron": neuron}
