"""TCAV (Kim et al. 2018, https://arxiv.org/abs/1711.11279): does a human concept push a class's logit up?

A concept activation vector (CAV) is the normal of a linear classifier that separates a layer's activations on a
concept's examples from those on a random set. A class's TCAV score is the fraction of its inputs whose class
logit rises along the CAV (the gradient of the logit w.r.t. the layer's activations, dotted with the CAV, is
positive). Whether that score means anything is tested against chance: the concept is scored against several
random sets, random sets are scored against each other (the null), and a two-sided t-test compares the two.

Activations come from the audit's ONNX graph (:func:`layer_activations`); gradients from torch
(:func:`class_logit_gradients`), which ONNX Runtime cannot give. Both are flattened the same way (C order).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from interp_ops import onnx_bundle
from interp_ops.layer_capture import LayerCapture
from interp_ops.token_grid import TokenGrid

# the share of each CAV's examples held out to measure its accuracy (Captum's DefaultClassifier holds out 0.33)
HELD_OUT = 0.33
# the fewest examples per side for which the stratified split leaves both sides in training and in the held-out part
MIN_EXAMPLES = 3
MAX_NEWTON_STEPS, NEWTON_TOLERANCE = 100, 1e-10


class TcavError(ValueError):
    """Bad TCAV input; the message says what was wrong and how to fix it."""


@dataclass(frozen=True)
class Cav:
    """A concept activation vector: the unit normal of the classifier, pointing towards the concept, and the
    classifier's accuracy on its held-out examples (near 0.5: the layer does not tell the concept apart)."""

    direction: np.ndarray
    accuracy: float


@dataclass(frozen=True)
class TcavResult:
    """One concept, layer and class. ``scores[i]``/``accuracies[i]``: the TCAV score and CAV accuracy of the
    concept against random set i; ``random_scores[i]``/``random_accuracies[i]``: the same for random set i against
    random set i+1 (cyclically), the null. ``significant``: ``p_value`` < ``threshold`` (alpha / comparisons)."""

    scores: np.ndarray
    accuracies: np.ndarray
    random_scores: np.ndarray
    random_accuracies: np.ndarray
    p_value: float
    threshold: float
    significant: bool

    @property
    def score_mean(self) -> float:
        return float(np.mean(self.scores))

    @property
    def score_std(self) -> float:
        return float(np.std(self.scores))

    @property
    def random_score_mean(self) -> float:
        return float(np.mean(self.random_scores))

    @property
    def random_score_std(self) -> float:
        return float(np.std(self.random_scores))


def layer_activations(session, x: np.ndarray, layer: str, batch_size: int = 64) -> np.ndarray:
    """(N, D) float32: ``layer``'s outputs flattened per row, read from the audit's graph batch by batch."""
    outputs = [out.name for out in session.get_outputs()[1:]]
    if layer not in outputs:
        raise TcavError(
            f"layer '{layer}' is not an output of the ONNX graph (its layers: {outputs}); export the model with "
            "that layer among the audited ones"
        )
    activations = onnx_bundle.run_session(session, x, batch_size, outputs=[layer])[layer]
    return activations.reshape(len(activations), -1)


def train_cav(concept: np.ndarray, random: np.ndarray, seed: int) -> Cav:
    """A CAV from concept (n, D) against random (m, D) activations: L2-regularised logistic regression (the objective
    of liblinear's with C = 1, its intercept a regularised feature of 1s), whose optimum is unique, so a CAV moves
    little when its activations move little (torch's against ONNX Runtime's).

    The optimum lies in the span of the training rows (the representer theorem), so it is found on their
    coordinates in an orthonormal basis of that span, from their Gram matrix: one product over the layer's width
    (tens of thousands), then an (n, n) problem, solved to machine precision by :func:`_l2_logistic`."""
    _check_widths(concept, [random])
    if min(len(concept), len(random)) < MIN_EXAMPLES:
        raise TcavError(
            f"a CAV needs at least {MIN_EXAMPLES} examples on each side, got {len(concept)} concept and "
            f"{len(random)} random ones; give more examples"
        )
    x = np.concatenate([concept, random])  # as given (float32 activations): products over the width in float32
    y = np.concatenate([np.ones(len(concept), dtype=np.int64), np.zeros(len(random), dtype=np.int64)])
    train, test = _held_out_split(len(concept), len(random), seed)
    rows = x[train]
    # one scale for all features keeps the direction's meaning and makes the fit independent of the layer's
    # magnitude (the regularisation means the same at every layer)
    scale = float(np.sqrt(np.einsum("ij,ij->i", rows, rows, dtype=np.float64)).mean())
    if scale == 0:
        raise TcavError("the layer's activations are all zero on these examples; no CAV separates them; pick a layer")
    # the Gram matrix of the scaled rows with the intercept's 1s; with its eigenvectors V and eigenvalues L, the
    # rows' coordinates in an orthonormal basis of their span are V * sqrt(L), and weights of that basis have the
    # norm of their coordinates: the same regularisation as in the full space
    eigenvalues, eigenvectors = np.linalg.eigh((rows @ rows.T).astype(np.float64) / scale**2 + 1.0)
    kept = eigenvalues > eigenvalues[-1] * 1e-12  # the span's dimension: rows that repeat others add none
    eigenvalues, eigenvectors = eigenvalues[kept], eigenvectors[:, kept]
    coordinates = _l2_logistic(eigenvectors * np.sqrt(eigenvalues), np.where(y[train] == 1, 1.0, -1.0))
    dual = eigenvectors @ (coordinates / np.sqrt(eigenvalues))  # the weights are the scaled rows' sum by these
    normal, intercept = rows.T.astype(np.float64) @ dual / scale, dual.sum()
    accuracy = np.mean((x[test] @ normal / scale + intercept > 0) == y[test])
    return Cav(direction=normal / np.linalg.norm(normal), accuracy=float(accuracy))


def _l2_logistic(features: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """argmin over g of sum_i log(1 + exp(-signs_i features_i . g)) + |g|^2 / 2, by Newton's method with a
    backtracking line search (the objective is strongly convex: it converges in about ten steps, to machine
    precision). Hand-written because the problem is tiny (n x n, n the examples): scikit-learn's liblinear took
    5.6 ms a CAV on the demo CNN, mostly its checks and set-up, this takes a fraction of one
    (benchmarks/tcav_bench.py, cav_fits)."""
    from scipy.special import expit

    def objective(g: np.ndarray) -> float:
        return float(np.logaddexp(0.0, -signs * (features @ g)).sum() + g @ g / 2)

    g = np.zeros(features.shape[1])
    for _ in range(MAX_NEWTON_STEPS):
        away = expit(-signs * (features @ g))  # each example's probability of the wrong side
        gradient = g - features.T @ (signs * away)
        if np.linalg.norm(gradient) <= NEWTON_TOLERANCE * max(1.0, np.linalg.norm(g)):
            break
        hessian = np.eye(len(g)) + (features.T * (away * (1 - away))) @ features
        step = np.linalg.solve(hessian, gradient)
        size, before, slope = 1.0, objective(g), gradient @ step
        while objective(g - size * step) > before - size * slope / 2 and size > 1e-10:
            size /= 2
        g = g - size * step
    return g


@functools.cache
def _held_out_split(concepts: int, randoms: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The stratified train and held-out rows of ``concepts`` concept rows followed by ``randoms`` random ones: it
    depends on the counts and the seed only, so a layer's CAVs (all of one size) share one."""
    from sklearn.model_selection import train_test_split

    y = np.concatenate([np.ones(concepts, dtype=np.int64), np.zeros(randoms, dtype=np.int64)])
    rows = train_test_split(np.arange(concepts + randoms), test_size=HELD_OUT, random_state=seed, stratify=y)
    for part in rows:
        part.flags.writeable = False  # shared by every caller
    return tuple(rows)


@contextmanager
def _evaluating(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode for the gradients (batch norm from its running statistics, which stay untouched), then every
    module's own training flag back."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def class_logit_gradients(
    model: torch.nn.Module,
    layer: str,
    x: np.ndarray,
    class_index: int,
    batch_size: int = 32,
    device: str = "cpu",
    grid: TokenGrid | None = None,
) -> np.ndarray:
    """(N, D) float32: the gradient of each input's class logit w.r.t. ``layer``'s output, flattened per row.
    Computed once per layer and class, it serves every CAV; the model keeps its weights, gradients and hooks.
    A token layer's gradient is laid out as its ``grid`` map, as the ONNX bundle lays out its activations."""
    if layer not in dict(model.named_modules()):
        raise TcavError(f"the model has no module '{layer}'; name one of its modules (model.named_modules())")
    chunks = []
    with _evaluating(model), LayerCapture(model, [layer]) as capture, torch.enable_grad():
        for start in range(0, len(x), batch_size):
            # a copy (x may be read-only) that needs a gradient, so the layer's output has one in a frozen model too
            batch = torch.tensor(x[start : start + batch_size], device=device, requires_grad=True)
            logits = model(batch)
            # w.r.t. the module's own output (a grid's map is computed beside the forward, not on its path); the
            # map is a selection and a reshape, so the map of the gradient is the gradient of the map
            (gradient,) = torch.autograd.grad(logits[:, class_index].sum(), capture.outputs[layer])
            if grid is not None:
                gradient = grid.as_map(layer, gradient)
            chunks.append(gradient.reshape(len(batch), -1).float().cpu().numpy())
    return np.concatenate(chunks)


def directional_derivatives(
    model: torch.nn.Module,
    layer: str,
    x: np.ndarray,
    class_index: int,
    direction: np.ndarray,
    batch_size: int = 32,
    device: str = "cpu",
) -> np.ndarray:
    """(N,): how fast each input's class logit rises as ``layer``'s activations move along ``direction``."""
    gradients = class_logit_gradients(model, layer, x, class_index, batch_size, device)
    _check_widths(gradients, [direction[None, :]])
    return gradients @ direction


def tcav_score(gradients: np.ndarray, direction: np.ndarray) -> float:
    """The fraction of inputs whose directional derivative along ``direction`` is positive."""
    return float(np.mean(gradients @ direction > 0))


def concept_cavs(concept: np.ndarray, randoms: Sequence[np.ndarray], seed: int) -> list[Cav]:
    """The concept's CAV against each random set. They serve every class: train them once per concept and layer."""
    return [train_cav(concept, random, seed) for random in randoms]


def null_cavs(randoms: Sequence[np.ndarray], seed: int) -> list[Cav]:
    """The null: random set i's CAV against random set i+1, cyclically, so that each random set stands in for a
    concept once (Kim et al. pair one random set with each of the others). Once per layer, for every concept."""
    _check_random_sets(randoms)
    return [train_cav(random, randoms[(i + 1) % len(randoms)], seed) for i, random in enumerate(randoms)]


def tcav_test(
    cavs: Sequence[Cav], null: Sequence[Cav], gradients: np.ndarray, alpha: float = 0.05, comparisons: int = 1
) -> TcavResult:
    """Score the concept's CAVs and the null's on one class's ``gradients`` (N, D) and compare them by a two-sided
    t-test (``scipy.stats.ttest_ind``): significant when p < alpha / comparisons (Bonferroni: ``comparisons``
    counts the concepts x layers x classes tested)."""
    from scipy.stats import ttest_ind

    _check_test_settings(alpha, comparisons)
    _check_random_sets(null)
    _check_widths(gradients, [cav.direction[None, :] for cav in [*cavs, *null]])
    scores = np.array([tcav_score(gradients, cav.direction) for cav in cavs])
    random_scores = np.array([tcav_score(gradients, cav.direction) for cav in null])
    with warnings.catch_warnings():  # scores that are all equal (often all 1.0) make scipy warn; the test holds
        warnings.simplefilter("ignore", RuntimeWarning)
        p_value = float(ttest_ind(scores, random_scores).pvalue)
    threshold = alpha / comparisons
    return TcavResult(
        scores=scores,
        accuracies=np.array([cav.accuracy for cav in cavs]),
        random_scores=random_scores,
        random_accuracies=np.array([cav.accuracy for cav in null]),
        p_value=p_value,
        threshold=threshold,
        significant=bool(p_value < threshold),  # a NaN p (no variance on either side) is not significant
    )


def tcav_scores(
    concept: np.ndarray,
    randoms: Sequence[np.ndarray],
    gradients: np.ndarray,
    seed: int,
    examples: int | None = None,
    alpha: float = 0.05,
    comparisons: int = 1,
) -> TcavResult:
    """TCAV of one concept at one layer for one class, tested against chance (:func:`tcav_test`).

    ``concept`` (n, D) and each of ``randoms`` (m, D): activations (:func:`layer_activations`); ``gradients``
    (N, D): the class's inputs' logit gradients at the layer (:func:`class_logit_gradients`). ``examples``: how
    many rows of the concept and of each random set to use (all when None). Every CAV is trained with ``seed``.
    For several classes, train :func:`concept_cavs` and :func:`null_cavs` once and test each class's gradients."""
    _check_random_sets(randoms)
    _check_test_settings(alpha, comparisons)  # before the CAVs are trained, not after
    _check_widths(concept, [*randoms, gradients])
    concept = _first_rows(concept, examples, "the concept")
    randoms = [_first_rows(random, examples, f"random set {i}") for i, random in enumerate(randoms)]
    return tcav_test(concept_cavs(concept, randoms, seed), null_cavs(randoms, seed), gradients, alpha, comparisons)


def layer_tcav(
    session,
    model: torch.nn.Module,
    layer: str,
    concepts: Mapping[str, np.ndarray],
    pool: np.ndarray,
    random_sets: Sequence[np.ndarray],
    classes: Mapping[int, np.ndarray],
    seed: int,
    alpha: float = 0.05,
    comparisons: int = 1,
    grid: TokenGrid | None = None,
    batch_size: int = 32,
    device: str = "cpu",
) -> dict[tuple[str, int], TcavResult]:
    """Every concept for every class at one layer, each tested against chance (:func:`tcav_test`).

    ``concepts``: name -> the concept's examples (model input); ``pool``: the inputs the random sets draw from,
    ``random_sets``: each set's rows of ``pool`` (sets overlap, so each row's activations are computed once);
    ``classes``: class index -> the inputs whose logit is differentiated. Each concept's CAVs and the null are
    trained once; one class's gradients are held at a time (a layer's width times its inputs)."""
    _check_random_sets(random_sets)
    _check_test_settings(alpha, comparisons)
    pooled = layer_activations(session, pool, layer, batch_size)
    randoms = [pooled[rows] for rows in random_sets]
    null = null_cavs(randoms, seed)
    cavs = {
        name: concept_cavs(layer_activations(session, x, layer, batch_size), randoms, seed)
        for name, x in concepts.items()
    }
    results = {}
    for class_index, x in classes.items():
        gradients = class_logit_gradients(model, layer, x, class_index, batch_size, device, grid)
        for name, concept in cavs.items():
            results[name, class_index] = tcav_test(concept, null, gradients, alpha, comparisons)
    return results


def draw_random_sets(labels: np.ndarray | None, rows: int, sets: int, size: int, seed: int) -> list[np.ndarray]:
    """``sets`` seeded draws of ``size`` distinct rows out of ``rows``, each sorted. With ``labels``, each set takes
    the classes in turns (equal shares, as far as each class has rows): a set then differs from a concept's
    examples in the concept and not in its mix of classes, which a layer near the logits tells apart and a CAV
    would follow (seen on the demo CNN at features.12)."""
    if size > rows:
        raise TcavError(
            f"random sets of {size} examples need at least {size} samples in the data, which has {rows}; "
            "give more data or fewer examples per concept"
        )
    rng = np.random.default_rng(seed)
    drawn = []
    for _ in range(sets):
        if labels is None:
            chosen = rng.choice(rows, size, replace=False)
        else:
            pools = [rng.permutation(np.flatnonzero(labels == label)) for label in rng.permutation(np.unique(labels))]
            depth = max(len(pool) for pool in pools)
            turns = [pool[i] for i in range(depth) for pool in pools if i < len(pool)]  # one of each class in turn
            chosen = np.array(turns[:size])
        drawn.append(np.sort(chosen))
    return drawn


def _check_test_settings(alpha: float, comparisons: int) -> None:
    if not 0 < alpha < 1:
        raise TcavError(f"alpha must lie in (0, 1), got {alpha}; 0.05 is usual")
    if comparisons < 1:
        raise TcavError(f"comparisons (concepts x layers x classes tested) must be at least 1, got {comparisons}")


def _check_random_sets(randoms: Sequence) -> None:
    if len(randoms) < 2:
        raise TcavError(
            f"TCAV needs at least 2 random sets, got {len(randoms)}: with one there is no random-vs-random null to "
            "test against; give more random sets"
        )


def _first_rows(activations: np.ndarray, examples: int | None, what: str) -> np.ndarray:
    if examples is None:
        return activations
    if len(activations) < examples:
        raise TcavError(
            f"{what} has {len(activations)} examples but {examples} were asked for; give more examples or ask for fewer"
        )
    return activations[:examples]


def _check_widths(first: np.ndarray, others: Sequence[np.ndarray]) -> None:
    """Every array (N, D) with the first's D: activations and gradients of one layer."""
    widths = [array.shape[1] if array.ndim == 2 else None for array in (first, *others)]
    if len(set(widths)) != 1 or widths[0] is None:
        raise TcavError(
            f"activations and gradients must be (N, D) arrays of one layer's width D; got widths {widths}. "
            "Compute all of them at the same layer"
        )
