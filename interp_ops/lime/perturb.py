"""How one kind of data is perturbed: the protocol the LIME loop asks of it, and the distances to build it from.

LIME explains an input by switching its interpretable features (superpixels, binned columns, words, time
windows) on and off, asking the model about each perturbed input, and fitting a linear surrogate to the
answers over the binary on/off rows, each row weighted by how close it is to the input. Only three things in
that loop depend on the kind of data, and `Perturbation` names them, as Captum's
``Lime(perturb_func=..., similarity_func=...)`` does: drawing a random neighbourhood, building the inputs of
chosen on/off rows, and measuring a row's distance to the input. Everything else (batching, the surrogate,
the scores, the tables) is shared, so a new kind of data is one module: a class implementing `Perturbation`,
and an explainer that hands it to `interp_ops.lime.explain.explain_samples` and
`interp_ops.lime.tables.table_rows` (image.py and tabular.py are the two implementations).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from interp_ops.lime.batching import ModelRows


@dataclass(frozen=True)
class Neighbourhood:
    """A sample's random perturbations: binary rows and the model inputs they stand for, in the same order.

    The fit rows come first, row 0 all on (the sample itself, which anchors the surrogate), then the held-out
    rows the surrogate is scored on.
    """

    binary: np.ndarray  # (rows, d) bool: True where the feature is as in the sample
    inputs: ModelRows


class Perturbation(Protocol):
    """What the LIME loop needs from one kind of data, for each sample of the batch being explained.

    Drawing is one method, not "draw masks" then "build inputs", because not every kind draws the binary rows
    first: tables draw values, and a row's binary is whether each value fell in the sample's bin.
    Implementations must draw only from the generator they are given: it is seeded per (seed, sample), which
    makes an explanation independent of the batch it was computed in.
    """

    def neighbourhood(self, index: int, rng: np.random.Generator, rows: int) -> Neighbourhood:
        """`rows` random perturbations of sample `index`, drawn from `rng`; row 0 is the sample itself, all on."""

    def masked(self, index: int, masks: np.ndarray) -> ModelRows:
        """Model inputs of sample `index` for chosen binary rows (rows, d): features on as in the sample, off
        ones hidden (images: the fill; tables: the training mean). The deletion/insertion curves are built
        from it."""

    def distance(self, binary: np.ndarray) -> np.ndarray:
        """(rows,) distance of each binary row (rows, d) to the all-on row; the kernel turns it into a weight."""


def cosine_distance_to_all_on(masks: np.ndarray) -> np.ndarray:
    """Cosine distance of each binary row to the all-ones row: 1 - sqrt(on / d); an all-off row is at 1."""
    return 1.0 - np.sqrt(masks.sum(axis=1) / masks.shape[1])


def euclidean_distance_to_all_on(masks: np.ndarray) -> np.ndarray:
    """Euclidean distance of each binary row to the all-ones row: sqrt(number of off features)."""
    return np.sqrt(masks.shape[1] - masks.sum(axis=1))
