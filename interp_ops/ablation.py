"""Unit ablation (Bau et al. 2020, "Understanding the role of individual units"): zero units of a layer and measure
what each class loses.

The audit's ONNX graph is cut at the layer: the activations are computed once (the layer is already an output of
the graph), and only the rest of the graph runs again per set of ablated units, on the activations with those
units zeroed. That is the same as a mask multiplied onto the layer's output inside the graph, without recomputing
everything before the layer for every set, and it needs no torch, so ONNX-only models are covered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from interp_ops import onnx_bundle


class AblationError(ValueError):
    """The layer cannot be ablated as asked; the message names the layer or the units."""


def graph_after(onnx_bytes: bytes, layer: str) -> bytes:
    """The part of the graph from the layer's output to the logits, with the layer's output as its one input.

    Refused when later nodes also read tensors from before the layer (a skip connection around it): zeroing the
    layer's units would then not be all that changes, and the cut graph could not compute the logits alone."""
    import onnx
    from onnx.utils import Extractor

    model = onnx.load_from_string(onnx_bytes)
    if layer not in {output.name for output in model.graph.output}:
        raise AblationError(f"layer {layer!r} is not an output of the audited graph; ablate one of model.layers")
    try:
        tail = Extractor(model).extract_model(input_names=[layer], output_names=[onnx_bundle.LOGITS])
    except Exception as exc:  # onnx raises plain exceptions for tensors it cannot reach
        raise AblationError(f"the graph cannot be cut at layer {layer!r}: {exc}") from exc
    graph = tail.graph
    available = {layer, *(o for node in graph.node for o in node.output), *(i.name for i in graph.initializer)}
    before = sorted({name for node in graph.node for name in node.input if name and name not in available})
    if before:
        others = ", ".join(before)
        raise AblationError(
            f"layer {layer!r} does not separate the graph: the logits also read {others} from before it "
            "(a skip connection around the layer); ablate a layer every path to the logits goes through"
        )
    return tail.SerializeToString()


def balanced_accuracy(predicted: np.ndarray, labels: np.ndarray, class_index: int) -> float:
    """One-vs-rest: (recall + true-negative rate) / 2, as Bau et al. measure a class."""
    positive = labels == class_index
    hit = predicted == class_index
    recall = hit[positive].mean() if positive.any() else np.nan
    true_negative = (~hit[~positive]).mean() if (~positive).any() else np.nan
    return float(np.nanmean([recall, true_negative]))


@dataclass(frozen=True)
class ClassScores:
    """Per class: balanced accuracy, and the mean probability of the class over its own samples."""

    accuracy: np.ndarray  # (classes,)
    probability: np.ndarray  # (classes,)


class UnitAblation:
    """The rest of the graph after ``layer``, run on its activations with chosen units zeroed. Not thread-safe: a
    set's units are zeroed in the activations while it runs."""

    def __init__(self, tail_session, activations: np.ndarray, labels: np.ndarray, num_classes: int, batch_size=256):
        if activations.ndim < 2:
            raise AblationError(f"activations of shape {activations.shape} have no unit axis")
        self.session = tail_session
        # ``logits`` zeroes units in place and puts them back: a read-only array (memory-mapped) is copied once
        self.activations = activations if activations.flags.writeable else activations.copy()
        self.labels = labels
        self.num_classes = num_classes
        self.batch_size = batch_size

    @property
    def num_units(self) -> int:
        return self.activations.shape[1]

    def rows(self, rows: np.ndarray) -> UnitAblation:
        """The same ablation on some rows of the data (a copy of their activations, made once)."""
        return UnitAblation(self.session, self.activations[rows], self.labels[rows], self.num_classes, self.batch_size)

    def logits(self, removed: Sequence[int]) -> np.ndarray:
        """Logits with the units in ``removed`` zeroed."""
        bad = [unit for unit in removed if not 0 <= unit < self.num_units]
        if bad:
            raise AblationError(f"units {bad} are outside the layer's {self.num_units} units (0..{self.num_units - 1})")
        removed = list(removed)
        # zeroed in place and put back after: a copy of the units removed, not of every activation (with a copy of
        # the rows per set the ablation bench measured 1.9x its floor on the demo CNN, 1.3x without)
        kept = self.activations[:, removed].copy()
        self.activations[:, removed] = 0
        try:
            return onnx_bundle.run_session(self.session, self.activations, self.batch_size, [onnx_bundle.LOGITS])[
                onnx_bundle.LOGITS
            ]
        finally:
            self.activations[:, removed] = kept

    def scores(self, removed: Sequence[int]) -> ClassScores:
        labels = self.labels
        logits = self.logits(removed)
        predicted, probability = logits.argmax(axis=1), onnx_bundle.softmax(logits)
        classes = range(self.num_classes)
        return ClassScores(
            accuracy=np.array([balanced_accuracy(predicted, labels, c) for c in classes]),
            probability=np.array(
                [probability[labels == c, c].mean() if (labels == c).any() else np.nan for c in classes]
            ),
        )

    def single_unit_drops(self) -> tuple[np.ndarray, np.ndarray]:
        """(classes, units) each: the drop of each class's balanced accuracy and of its mean probability when a unit
        alone is zeroed."""
        before = self.scores([])
        alone = [self.scores([unit]) for unit in range(self.num_units)]
        accuracy = np.stack([before.accuracy - scores.accuracy for scores in alone], axis=1)
        probability = np.stack([before.probability - scores.probability for scores in alone], axis=1)
        return accuracy, probability

    def effects(
        self,
        sizes: Sequence[int],
        random_draws: int,
        seed: int,
        class_names: Sequence[str] | None = None,
        candidates: Sequence[int] | None = None,
    ) -> AblationEffects:
        """Per class (of those the measuring half holds samples of) and size K: the K ``candidates`` (default: every
        unit) with the largest single-unit effect on the class, ranked on one half of the data and measured on the other (so a ranking cannot flatter itself),
        against ``random_draws`` random sets of K units of the whole layer measured the same way. A unit's effect
        is the drop of the class's mean probability when it alone is zeroed (continuous, so fewer ties than
        accuracy)."""
        pool = np.arange(self.num_units) if candidates is None else np.unique(np.asarray(candidates, dtype=np.int64))
        if len(pool) and not 0 <= pool.min() <= pool.max() < self.num_units:
            raise AblationError(f"candidate units must lie in 0..{self.num_units - 1} (got {pool.tolist()})")
        too_big = [k for k in sizes if not 1 <= k <= len(pool)]
        if too_big:
            raise AblationError(f"sizes {too_big} must be between 1 and the {len(pool)} units ranked")
        names = [class_names[c] if class_names and c < len(class_names) else str(c) for c in range(self.num_classes)]
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(self.labels))
        accuracy_drops, probability_drops = self.rows(np.sort(order[::2])).single_unit_drops()
        ranking = pool[np.argsort(-probability_drops[:, pool], axis=1, kind="stable")]
        measuring = self.rows(np.sort(order[1::2]))
        before = measuring.scores([])
        measured = [c for c in range(self.num_classes) if (measuring.labels == c).any()]  # classes it can tell
        rows = []
        for k in sizes:
            draws = [np.sort(rng.choice(self.num_units, size=k, replace=False)) for _ in range(random_draws)]
            random_scores = [measuring.scores(draw) for draw in draws]
            for c in measured:
                top = np.sort(ranking[c, :k])
                after = measuring.scores(top)
                random_drops = np.array([before.accuracy[c] - scores.accuracy[c] for scores in random_scores])
                rows.append(
                    {
                        "class_index": c,
                        "class_name": names[c],
                        "k": k,
                        "units": top.tolist(),
                        "accuracy_before": float(before.accuracy[c]),
                        "accuracy_after": float(after.accuracy[c]),
                        "accuracy_drop": float(before.accuracy[c] - after.accuracy[c]),
                        "probability_drop": float(before.probability[c] - after.probability[c]),
                        "random_drop_mean": float(random_drops.mean()) if random_draws else None,
                        "random_drop_std": float(random_drops.std()) if random_draws else None,
                    }
                )
        strongest = np.nan_to_num(probability_drops, nan=-np.inf).argmax(axis=0)
        units = []
        for unit in pool:
            c = strongest[unit]
            drop = float(probability_drops[c, unit])
            units.append(
                {
                    "unit": int(unit),
                    "class_name": names[c] if drop > 0 else None,
                    "probability_drop": drop,
                    "accuracy_drop": float(accuracy_drops[c, unit]),
                }
            )
        return AblationEffects(rows, units)


@dataclass(frozen=True)
class AblationEffects:
    """``rows``: per class and K (``ablation_results``' columns but the run id and the layer). ``units``: per
    ranked unit, the class whose mean probability falls most when it alone is zeroed (None when none falls), by how
    much, and what that class's balanced accuracy loses (on the ranking half)."""

    rows: list[dict]
    units: list[dict]
