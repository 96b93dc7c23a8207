"""Unit ablation (Bau et al. 2020, "Understanding the role of individual units"): zero units of a layer and measure
what each class loses.

The audit's ONNX graph is cut at the layer: the activations are computed once (the layer is already an output of
the graph), and only the rest of the graph runs again per set of ablated units, on the activations with those
units zeroed. That is the same as a mask multiplied onto the layer's output inside the graph, without recomputing
everything before the layer for every set, and it needs no torch, so ONNX-only models are covered.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator, Sequence
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


Activations = Callable[[np.ndarray], Iterator[np.ndarray]]
"""Given sorted row numbers of the data, the layer's activations of those rows, a batch at a time, in row order."""


def stored_activations(activations: np.ndarray, batch_size: int = 256) -> Activations:
    """Activations already in memory (an array, or a memory map), served a batch of rows at a time."""

    def batches(rows: np.ndarray) -> Iterator[np.ndarray]:
        for start in range(0, len(rows), batch_size):
            yield activations[rows[start : start + batch_size]]

    return batches


def computed_activations(head_session, x, layer: str, batch_size: int = 256) -> Activations:
    """Activations computed a batch at a time by ``head_session`` (a graph with ``layer`` among its outputs) from
    the rows of ``x`` (an array or a ``SampleFile``, read a batch at a time): memory stays one batch whatever the
    data's size."""

    def batches(rows: np.ndarray) -> Iterator[np.ndarray]:
        for start in range(0, len(rows), batch_size):
            yield onnx_bundle.run_session(head_session, x[rows[start : start + batch_size]], batch_size, [layer])[layer]

    return batches


@dataclass(frozen=True)
class ClassScores:
    """Per class: balanced accuracy, and the mean probability of the class over its own samples."""

    accuracy: np.ndarray  # (classes,)
    probability: np.ndarray  # (classes,)


class ClassTally:
    """Counts from which each class's scores follow, added a batch at a time: per class, the samples of it
    predicted as it (recall) and the samples of other classes predicted as it (the false positives the
    true-negative rate misses), and the sum of its probability over its own samples. Balanced accuracy is
    (recall + true-negative rate) / 2 one-vs-rest, as Bau et al. measure a class."""

    def __init__(self, num_classes: int):
        self.classes = np.arange(num_classes)
        self.samples = np.zeros(num_classes, dtype=np.int64)  # per class, its samples
        self.hits = np.zeros(num_classes, dtype=np.int64)
        self.false_positives = np.zeros(num_classes, dtype=np.int64)
        self.probability_sum = np.zeros(num_classes)

    def add(self, logits: np.ndarray, labels: np.ndarray) -> None:
        is_class = labels[:, None] == self.classes
        predicted_as = logits.argmax(axis=1)[:, None] == self.classes
        self.samples += is_class.sum(axis=0)
        self.hits += (predicted_as & is_class).sum(axis=0)
        self.false_positives += (predicted_as & ~is_class).sum(axis=0)
        self.probability_sum += np.where(is_class, onnx_bundle.softmax(logits), 0.0).sum(axis=0)

    def scores(self) -> ClassScores:
        others = self.samples.sum() - self.samples
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = np.where(self.samples > 0, self.hits / self.samples, np.nan)
            true_negative = np.where(others > 0, 1 - self.false_positives / others, np.nan)
            probability = np.where(self.samples > 0, self.probability_sum / self.samples, np.nan)
        with warnings.catch_warnings():  # a class with neither its own samples nor others' has no accuracy: NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            accuracy = np.nanmean(np.stack([recall, true_negative]), axis=0)
        return ClassScores(accuracy=accuracy, probability=probability)


class UnitAblation:
    """The rest of the graph after a layer, run on its activations with chosen units zeroed, for some rows of the
    data. The activations come a batch at a time (``Activations``) and every set of units asked for at once is
    measured on each batch before the next is read, so memory does not grow with the data."""

    def __init__(
        self,
        tail_session,
        activations: np.ndarray | Activations,
        labels: np.ndarray,
        num_classes: int,
        batch_size: int = 256,
        rows: np.ndarray | None = None,
    ):
        if isinstance(activations, np.ndarray) and activations.ndim < 2:
            raise AblationError(f"activations of shape {activations.shape} have no unit axis")
        self.session = tail_session
        self.activations = (
            stored_activations(activations, batch_size) if isinstance(activations, np.ndarray) else activations
        )
        self.all_labels = np.asarray(labels)
        self.selected = np.arange(len(self.all_labels)) if rows is None else np.asarray(rows, dtype=np.int64)
        self.num_classes = num_classes
        self.batch_size = batch_size
        units = activations.shape[1] if isinstance(activations, np.ndarray) else tail_session.get_inputs()[0].shape[1]
        if not isinstance(units, int) and len(self.selected):  # a symbolic dimension: read it off one row
            units = next(self.activations(self.selected[:1])).shape[1]
        self.num_units = units

    @property
    def labels(self) -> np.ndarray:
        return self.all_labels[self.selected]

    def rows(self, rows: np.ndarray) -> UnitAblation:
        """The same ablation on some of these rows (positions among them); the unit count is not resolved again."""
        subset = copy.copy(self)
        subset.selected = self.selected[rows]
        return subset

    def _check(self, sets: Sequence[Sequence[int]]) -> None:
        bad = sorted({unit for removed in sets for unit in removed if not 0 <= unit < self.num_units})
        if bad:
            raise AblationError(f"units {bad} are outside the layer's {self.num_units} units (0..{self.num_units - 1})")

    def _tail_logits(self, batch: np.ndarray, removed: Sequence[int]) -> np.ndarray:
        """Logits of a batch with the units in ``removed`` zeroed in place and put back after (a copy of the units
        removed, not of the batch: with a copy of the rows per set the ablation bench measured 1.9x its floor on
        the demo CNN, 1.3x without)."""
        removed = list(removed)
        kept = batch[:, removed].copy()
        batch[:, removed] = 0
        try:
            return onnx_bundle.run_session(self.session, batch, len(batch), [onnx_bundle.LOGITS])[onnx_bundle.LOGITS]
        finally:
            batch[:, removed] = kept

    def _batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(writable activations, labels) of the rows, a batch at a time."""
        labels, start = self.labels, 0
        for batch in self.activations(self.selected):
            batch = batch if batch.flags.writeable else batch.copy()
            yield batch, labels[start : start + len(batch)]
            start += len(batch)

    def logits(self, removed: Sequence[int]) -> np.ndarray:
        """Logits of the rows with the units in ``removed`` zeroed."""
        self._check([removed])
        return np.concatenate([self._tail_logits(batch, removed) for batch, _ in self._batches()])

    def scores_of(self, sets: Sequence[Sequence[int]]) -> list[ClassScores]:
        """Each set's class scores with its units zeroed, in one pass over the rows."""
        self._check(sets)
        tallies = [ClassTally(self.num_classes) for _ in sets]
        for batch, labels in self._batches():
            for removed, tally in zip(sets, tallies):
                tally.add(self._tail_logits(batch, removed), labels)
        return [tally.scores() for tally in tallies]

    def scores(self, removed: Sequence[int]) -> ClassScores:
        return self.scores_of([removed])[0]

    def single_unit_drops(self) -> tuple[np.ndarray, np.ndarray]:
        """(classes, units) each: the drop of each class's balanced accuracy and of its mean probability when a unit
        alone is zeroed."""
        before, *alone = self.scores_of([[], *([unit] for unit in range(self.num_units))])
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
        top: int | None = None,
    ) -> AblationEffects:
        """Per class (of those the measuring half holds samples of) and size K: the K ``candidates`` (default: every
        unit; ``top``: the ``top`` units of largest effect on any class) with the largest single-unit effect on the
        class, ranked on one half of the data and measured on the other (so a ranking cannot flatter itself),
        against ``random_draws`` random sets of K units of the whole layer measured the same way. A unit's effect
        is the drop of the class's mean probability when it alone is zeroed (continuous, so fewer ties than
        accuracy)."""
        pool = np.arange(self.num_units) if candidates is None else np.unique(np.asarray(candidates, dtype=np.int64))
        if len(pool) and not 0 <= pool.min() <= pool.max() < self.num_units:
            raise AblationError(f"candidate units must lie in 0..{self.num_units - 1} (got {pool.tolist()})")
        if top is not None and not 1 <= top <= len(pool):
            raise AblationError(f"top={top} must be between 1 and the {len(pool)} units ranked")
        ranked = len(pool) if top is None else top
        too_big = [k for k in sizes if not 1 <= k <= ranked]
        if too_big:
            raise AblationError(f"sizes {too_big} must be between 1 and the {ranked} units ranked")
        names = [class_names[c] if class_names and c < len(class_names) else str(c) for c in range(self.num_classes)]
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(self.labels))
        accuracy_drops, probability_drops = self.rows(np.sort(order[::2])).single_unit_drops()
        if top is not None:  # the units whose largest class effect is largest, in unit order
            strength = np.nan_to_num(probability_drops[:, pool], nan=-np.inf).max(axis=0)
            pool = np.sort(pool[np.argsort(-strength, kind="stable")[:top]])
        ranking = pool[np.argsort(-probability_drops[:, pool], axis=1, kind="stable")]
        measuring = self.rows(np.sort(order[1::2]))
        measured = [c for c in range(self.num_classes) if (measuring.labels == c).any()]  # classes it can tell
        draws = {
            k: [np.sort(rng.choice(self.num_units, size=k, replace=False)) for _ in range(random_draws)] for k in sizes
        }
        tops = {(k, c): np.sort(ranking[c, :k]) for k in sizes for c in measured}
        sets = [[], *(draw for k in sizes for draw in draws[k]), *tops.values()]
        before, *scored = measuring.scores_of(sets)  # every set in one pass over the measuring half
        random_scores = {k: scored[i * random_draws : (i + 1) * random_draws] for i, k in enumerate(sizes)}
        top_scores = dict(zip(tops, scored[len(sizes) * random_draws :]))
        rows = []
        for k in sizes:
            for c in measured:
                top, after = tops[k, c], top_scores[k, c]
                random_drops = np.array([before.accuracy[c] - scores.accuracy[c] for scores in random_scores[k]])
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
