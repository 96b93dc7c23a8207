"""Linear probes (Alain & Bengio 2016, https://arxiv.org/abs/1610.01644) with control tasks (Hewitt & Liang 2019,
https://arxiv.org/abs/1909.03368): how well can a linear classifier read an attribute off a layer?

A layer's output is pooled to one value per channel (:func:`pooled_activations`), and a seeded, cross-validated
L2 logistic regression predicts the attribute from it (:func:`probe`). High accuracy alone may be the probe's
doing rather than the layer's: the same probe on the same folds also learns a control task, labels with no relation
to the input, and the layer is credited only with the difference, the selectivity.

Attributes are integer labels per input: the class label as the data gives it, a concept's presence
(:func:`concept_presence`) or a tabular column's classes (:func:`column_classes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from interp_ops import onnx_bundle
from interp_ops.blas import one_blas_thread
from interp_ops.concepts import ConceptDataError, ConceptSet

# a column with at most this many distinct values is taken as categorical: its values are the classes
MAX_COLUMN_VALUES = 10
LISTED_NAMES = 20  # how many known names an error lists


class ProbeError(ValueError):
    """Bad probe input; the message says what was wrong and how to fix it."""


@dataclass(frozen=True)
class ProbeResult:
    """One layer and attribute. ``accuracies[i]``: the probe's accuracy on held-out fold i; ``control_accuracies[i]``:
    the same probe's on the control task, same fold; ``chance``: the majority class's share of the labels."""

    accuracies: np.ndarray
    control_accuracies: np.ndarray
    chance: float

    @property
    def accuracy_mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def accuracy_std(self) -> float:
        return float(np.std(self.accuracies))

    @property
    def control_mean(self) -> float:
        return float(np.mean(self.control_accuracies))

    @property
    def selectivity(self) -> float:
        """Accuracy above the control task's: what the layer, not the probe's capacity, makes readable."""
        return self.accuracy_mean - self.control_mean


def pooled_activations(session, x, layer: str, batch_size: int = 64) -> np.ndarray:
    """(N, C) float64: ``layer``'s output averaged over all positions per channel, computed from the audit's ONNX
    graph a batch at a time, so memory holds one batch of the layer's maps and the (N, C) result.

    Axis 1 is the channel axis of every output in the graph: a convolution's (B, C, H, W) is averaged over H and W;
    a transformer layer is exported as its (B, D, rows, cols) token map (``onnx_bundle.export_torch`` with its
    ``TokenGrid``), so it is averaged over the patch tokens, the skipped class token not among them; a (B, D) output
    is taken as it is. ``x``: model input (an array or a ``SampleFile``), read a batch at a time."""
    outputs = [output.name for output in session.get_outputs()[1:]]
    if layer not in outputs:
        raise ProbeError(
            f"layer '{layer}' is not an output of the ONNX graph (its layers: {outputs}); probe one of the audited "
            "layers or export the model with this one"
        )
    if batch_size < 1:
        raise ProbeError(f"batch_size={batch_size}; give a batch size of at least 1")
    pooled = None
    for start in range(0, len(x), batch_size):
        maps = onnx_bundle.run_session(session, x[start : start + batch_size], batch_size, [layer])[layer]
        if maps.ndim < 2:
            raise ProbeError(f"layer '{layer}' outputs shape {list(maps.shape)}, with no channel axis; probe another")
        if pooled is None:
            pooled = np.empty((len(x), maps.shape[1]), dtype=np.float64)
        pooled[start : start + len(maps)] = maps.mean(axis=tuple(range(2, maps.ndim)), dtype=np.float64)
    if pooled is None:
        raise ProbeError("no inputs to probe on; give at least one")
    return pooled


def probe(features: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0) -> ProbeResult:
    """Cross-validated accuracy of a linear probe predicting ``labels`` (N,) from ``features`` (N, C), and of the
    same probe on the control task; bit-identical for a seed.

    The probe standardises each feature on its training folds and fits an L2 logistic regression (C = 1), so the
    regularisation means the same at every layer whatever its scale. Folds: ``StratifiedKFold`` shuffled with
    ``seed``. Hewitt & Liang's control task gives each word type a random label of the same distribution, so that a
    probe can score only by memorising types; with one feature vector per input, the input is the type, and the
    labels permuted once with ``seed`` are that control, learnt and scored on the same folds."""
    from sklearn.model_selection import StratifiedKFold

    x, y = _checked(features, labels, folds)
    splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y))
    control = np.random.default_rng(seed).permutation(y)
    # one BLAS thread: the fits are small, and on 2 shared cores two threads made them 3-5x slower (an audit runs
    # probes side by side as tasks instead); and sums taken in one order whatever the machine's core count
    with one_blas_thread():
        accuracies, control_accuracies = (_fold_accuracies(x, target, splits) for target in (y, control))
    return ProbeResult(
        accuracies=accuracies,
        control_accuracies=control_accuracies,
        chance=float(np.unique(y, return_counts=True)[1].max() / len(y)),
    )


def _pipeline():
    """The probe: standardisation, then L2 logistic regression by lbfgs, the fastest solver measured here (one BLAS
    thread, 5 folds of 2,000 inputs x 2,048 channels): 0.43 s for 2 classes against liblinear's 2.6 s and
    newton-cholesky's 35 s; 0.9 s for 3 classes, which liblinear does not take (scikit-learn 1.9)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))


def _fold_accuracies(x: np.ndarray, y: np.ndarray, splits: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    return np.array([_pipeline().fit(x[train], y[train]).score(x[test], y[test]) for train, test in splits])


def _checked(features: np.ndarray, labels: np.ndarray, folds: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(features, dtype=np.float64), np.asarray(labels)
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise ProbeError(
            f"features {list(x.shape)} and labels {list(y.shape)} do not match: give features (N, C) and labels "
            "(N,), one row and one label per input"
        )
    if not np.isfinite(x).all():
        raise ProbeError("the features hold NaN or infinite values; check the model and its input normalization")
    if folds < 2:
        raise ProbeError(f"folds={folds}; cross-validation needs at least 2")
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise ProbeError(
            f"the labels hold {len(classes)} class(es) {classes.tolist()}: a probe needs at least 2; probe an "
            "attribute that varies over the inputs, or give inputs where it does"
        )
    if counts.min() < folds:
        raise ProbeError(
            f"class {classes[counts.argmin()]} has {counts.min()} inputs, fewer than the {folds} folds, so some folds "
            "would hold none of it; give more inputs of each class or use fewer folds"
        )
    return x, y


def concept_presence(concepts: ConceptSet, label: str, batch_size: int = 256) -> np.ndarray:
    """(N,) int64: 1 where an image carries the concept ``label`` (a name in label.csv): a pixel of it in any of its
    masks, or the label among its image-level labels; 0 elsewhere. Reads the masks, not the images."""
    try:
        ids = concepts.known_label_ids(label)
    except ConceptDataError as exc:
        raise ProbeError(f"probe attribute: {exc}; name one of them") from None
    batches = concepts.batches(batch_size, images=False)
    return np.concatenate([concepts.present(batch, ids) for batch in batches]).astype(np.int64)


def column_classes(x: np.ndarray, feature_names: Sequence[str], column: str, bins: int = 2) -> np.ndarray:
    """(N,) int64 classes of a tabular column of ``x`` (N, D): with at most MAX_COLUMN_VALUES distinct values,
    the index of each value among them (sorted); otherwise its quantile bin among ``bins`` equally populated ones
    (2: at or above the median, or below)."""
    if column not in feature_names:
        raise ProbeError(
            f"probe attribute: column '{column}' does not exist in the data (its columns: {_listed(feature_names)}); "
            "name one of them"
        )
    values = np.asarray(x)[:, list(feature_names).index(column)]
    if not np.isfinite(values).all():
        raise ProbeError(f"column '{column}' holds NaN or infinite values; probe a column without missing values")
    distinct, classes = np.unique(values, return_inverse=True)
    if len(distinct) <= MAX_COLUMN_VALUES:
        return classes.astype(np.int64)
    if bins < 2:
        raise ProbeError(f"bins={bins}; a numeric column needs at least 2 quantile bins")
    edges = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])
    return np.searchsorted(edges, values, side="right").astype(np.int64)


def _listed(names: Sequence[str]) -> str:
    names = list(names)
    more = f" and {len(names) - LISTED_NAMES} more" if len(names) > LISTED_NAMES else ""
    return ", ".join(names[:LISTED_NAMES]) + more
