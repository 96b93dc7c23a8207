"""Per-channel input normalization: how samples in display space (images in [0, 1], tabular features as they are)
become what the model takes. One definition for the data every method reads (``datasets.to_model_input``) and for
the activation-maximization renders (``actmax.render``), on numpy arrays and torch tensors alike, so a render and a
data image with the same pixels reach the model as the same input, bit for bit.

The arithmetic is three steps in the input's own dtype (float32 for data and renders), each rounded on its own:
``x * (high - low) + low``, then ``- mean``, then ``/ std``. Folding them into one multiply-add would round once
instead of three times and differ by up to one ulp wherever std is not a power of two.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class NormalizationError(ValueError):
    """A value range, mean or std that cannot normalize; the message names the argument and the fix."""


@dataclass(frozen=True)
class Normalization:
    """``(x * (high - low) + low - mean) / std`` along a channel axis, and its inverse.

    A step whose argument is None is skipped: ``value_range`` None leaves values as they are (tabular features),
    ``mean`` None subtracts nothing, ``std`` None divides by nothing. Build it with :meth:`checked`.
    """

    channels: int
    value_range: tuple[float, float] | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    # per (array type, dtype, device, ndim, channel axis): mean and std shaped to broadcast, made once
    _constants: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def checked(
        cls,
        channels: int,
        value_range: Sequence[float] | None = (0.0, 1.0),
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> Normalization:
        """Validated; one mean or std value stands for every channel."""
        if value_range is not None:
            value_range = tuple(float(v) for v in value_range)
            if len(value_range) != 2 or not all(map(math.isfinite, value_range)) or not value_range[0] < value_range[1]:
                raise NormalizationError(
                    f"value_range: {value_range} must be two finite numbers (low, high) with low < high; "
                    "give the range the model's inputs span before mean and std, e.g. (0, 1)"
                )
        mean = _per_channel("mean", mean, channels)
        std = _per_channel("std", std, channels)
        if std is not None and not all(value > 0 for value in std):
            raise NormalizationError(f"std: {list(std)} must all be > 0; give positive standard deviations")
        return cls(channels, value_range, mean, std)

    def apply(self, x: Any, channel_axis: int = -1) -> Any:
        """Display space -> model input; ``x`` a numpy array or a torch tensor with channels on ``channel_axis``."""
        mean, std = self._broadcast(x, channel_axis)
        if self.value_range is not None:
            low, high = self.value_range
            x = x * (high - low) + low
        if mean is not None:
            x = x - mean
        if std is not None:
            x = x / std
        return x

    def invert(self, x: Any, channel_axis: int = -1) -> Any:
        """Model input -> display space, the steps of :meth:`apply` undone in reverse order (not clipped)."""
        mean, std = self._broadcast(x, channel_axis)
        if std is not None:
            x = x * std
        if mean is not None:
            x = x + mean
        if self.value_range is not None:
            low, high = self.value_range
            x = (x - low) / (high - low)
        return x

    def _broadcast(self, x: Any, channel_axis: int) -> tuple[Any, Any]:
        """mean and std in x's dtype (and device), shaped to broadcast along channel_axis."""
        if x.shape[channel_axis] != self.channels:
            raise NormalizationError(
                f"input has {x.shape[channel_axis]} channels on axis {channel_axis} (shape {tuple(x.shape)}), "
                f"but the normalization was made for {self.channels}; give inputs with {self.channels} channels"
            )
        numpy = isinstance(x, np.ndarray)
        key = (numpy, x.dtype, None if numpy else x.device, x.ndim, channel_axis % x.ndim)
        if key not in self._constants:
            shape = [1] * x.ndim
            shape[channel_axis] = self.channels

            def shaped(values: tuple[float, ...] | None):
                if values is None:
                    return None
                return np.asarray(values, dtype=x.dtype).reshape(shape) if numpy else x.new_tensor(values).view(shape)

            self._constants[key] = (shaped(self.mean), shaped(self.std))
        return self._constants[key]


def _per_channel(name: str, values: Sequence[float] | None, channels: int) -> tuple[float, ...] | None:
    if values is None:
        return None
    values = [float(v) for v in values]
    if len(values) not in (1, channels):
        raise NormalizationError(f"{name}: {len(values)} values for {channels} channels; give 1 or {channels}")
    if not all(map(math.isfinite, values)):
        raise NormalizationError(f"{name}: {values} must be finite numbers")
    return tuple(values * channels if len(values) == 1 else values)
