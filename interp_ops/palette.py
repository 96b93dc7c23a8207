"""The named colours the synthetic builtins paint with, RGB in [0, 1], so that "red" is the same red in every one.

Each builtin picks its colours by name, in its own order; the order is part of its data (a seed draws an index
into it), so reordering a builtin's names changes what it generates.
"""

from __future__ import annotations

import numpy as np

NAMED_COLORS = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "cyan": (0.0, 1.0, 1.0),
    "magenta": (1.0, 0.0, 1.0),
    "orange": (1.0, 0.5, 0.0),
    "purple": (0.5, 0.0, 1.0),
    "spring-green": (0.0, 1.0, 0.5),
    "white": (1.0, 1.0, 1.0),
}


def rgb(names: tuple[str, ...]) -> np.ndarray:
    """float32 (len(names), 3): the colours of ``names``, in that order."""
    return np.array([NAMED_COLORS[name] for name in names], dtype=np.float32)
