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
from interp_ops.blas import one_blas_thread
from interp_ops.layer_capture import LayerCapture
from interp_ops.token_grid import TokenGrid

# the share of each CAV's examples held out to measure its accuracy (Captum's DefaultClassifier holds out 0.33)
HELD_OUT = 0.33
# the fewest examples per side for which the stratified split leaves both sides in training and in the held-out part
MIN_EXAMPLES = 3
MAX_NEWTON_STEPS, NEWTON_TOLERANCE = 100, 1e-10
CONCEPT_SIDE, RANDOM_SIDE = 0, 1  # the sides of a (concept, random) pair


class TcavError(ValueError):
    """Bad TCAV input; the message says what was wrong and how to fix it."""


@dataclass(frozen=True)
class Cav:
    """A concept activation vector: the unit normal of the classifier, pointing towards the concept (float32, as the
    activations and gradients it is dotted with), and the classifier's accuracy on its held-out examples (near 0.5:
    the layer does not tell the concept apart)."""

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
    little when its activations move little (torch's against ONNX Runtime's). :func:`train_cavs` for one pair."""
    return train_cavs([concept, random], [(0, 1)], seed)[0]


def train_cavs(sets: Sequence[np.ndarray], pairs: Sequence[tuple[int, int]], seed: int) -> list[Cav]:
    """The CAV of ``sets[c]`` (the concept side) against ``sets[r]`` (the random side) for each ``(c, r)`` in ``pairs``,
    in the order of ``pairs``; every fit holds out the same share of each side, drawn with ``seed``.

    The optimum lies in the span of a fit's training rows (the representer theorem), so it is found on their
    coordinates in an orthonormal basis of that span, from their Gram matrix: products over the layer's width (tens
    of thousands), then a small (rows x rows) problem, solved to machine precision by :func:`_l2_logistic`. A layer's
    CAVs share their sets (each concept meets every random set, each random set sits on both sides of the null),
    so each set's rows on each side are gathered, and their Gram block computed, once; only the blocks between a
    pair's two sides are a pair's own, and the pairs' small problems are solved as one batch. Training a layer's
    CAVs one pair at a time spent most of its time copying and converting rows (benchmarks/tcav_bench.py)."""
    _check_widths(sets[0], sets[1:])
    for concept, random in pairs:
        if min(len(sets[concept]), len(sets[random])) < MIN_EXAMPLES:
            raise TcavError(
                f"a CAV needs at least {MIN_EXAMPLES} examples on each side, got {len(sets[concept])} concept and "
                f"{len(sets[random])} random ones; give more examples"
            )
    by_sizes: dict[tuple[int, int], list[int]] = {}  # pairs of one size share their held-out positions
    for position, (concept, random) in enumerate(pairs):
        by_sizes.setdefault((len(sets[concept]), len(sets[random])), []).append(position)
    cavs: list[Cav] = [None] * len(pairs)  # type: ignore[list-item]
    with one_blas_thread():
        for (concepts, randoms), positions in by_sizes.items():
            fitted = _train_same_size(sets, [pairs[position] for position in positions], concepts, randoms, seed)
            for position, cav in zip(positions, fitted):
                cavs[position] = cav
    return cavs


def _train_same_size(
    sets: Sequence[np.ndarray], pairs: list[tuple[int, int]], concepts: int, randoms: int, seed: int
) -> list[Cav]:
    train, held_out = _held_out_split(concepts, randoms, seed)
    # each side's positions in its sets (training rows, held-out rows); the sets on each side; the pairs that use
    # each set on each side; each set's training rows on each side, gathered once, in float32 (the activations'
    # precision; products over the width in float64 cost twice as much)
    positions = {
        CONCEPT_SIDE: (np.sort(train[train < concepts]), np.sort(held_out[held_out < concepts])),
        RANDOM_SIDE: (np.sort(train[train >= concepts]) - concepts, np.sort(held_out[held_out >= concepts]) - concepts),
    }
    members = {side: sorted({pair[side] for pair in pairs}) for side in (CONCEPT_SIDE, RANDOM_SIDE)}
    users = {
        (side, index): [i for i, pair in enumerate(pairs) if pair[side] == index]
        for side in members
        for index in members[side]
    }
    rows = {side: _gathered(sets, members[side], positions[side][0]) for side in members}
    parts = {
        CONCEPT_SIDE: slice(None, len(positions[CONCEPT_SIDE][0])),
        RANDOM_SIDE: slice(len(positions[CONCEPT_SIDE][0]), None),
    }
    gram = _pair_grams(pairs, members, users, rows, parts)
    # one scale for all features keeps the direction's meaning and makes the fit independent of the layer's
    # magnitude (the regularisation means the same at every layer): the rows' mean norm, from the Gram's diagonal
    scales = np.sqrt(np.diagonal(gram, axis1=1, axis2=2)).mean(axis=1)
    if not scales.all():
        raise TcavError("the layer's activations are all zero on these examples; no CAV separates them; pick a layer")
    signs = np.where(np.arange(len(train)) < len(positions[CONCEPT_SIDE][0]), 1.0, -1.0)
    # the weights of the rows (scaled, with the intercept's 1s) whose sum is each pair's solution: the normal is
    # the rows' sum by weight / scale, the intercept the weights' sum
    dual = _dual_weights(gram / scales[:, None, None] ** 2 + 1.0, signs)
    weights, intercepts = (dual / scales[:, None]).astype(np.float32), dual.sum(axis=1)
    normals = np.zeros((len(pairs), sets[0].shape[1]), dtype=np.float32)
    for side, part in parts.items():
        for index, block in zip(members[side], rows[side]):
            normals[users[side, index]] += weights[users[side, index], part] @ block
    correct = np.zeros(len(pairs))
    for (side, index), using in users.items():
        held = np.asarray(sets[index][positions[side][1]], dtype=np.float32)
        decisions = held @ normals[using].T / scales[using] + intercepts[using]
        correct[using] += ((decisions > 0) == (side == CONCEPT_SIDE)).sum(axis=0)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    return [Cav(direction=normal, accuracy=float(right / len(held_out))) for normal, right in zip(normals, correct)]


def _pair_grams(pairs, members, users, rows, parts) -> np.ndarray:
    """(pairs, n, n) float64: each pair's Gram matrix of its training rows (its concept side's, then its random
    side's), from each set's own block (computed once) and the blocks between a pair's sides (one product per
    concept-side set against all its partners, which is faster than one per partner)."""
    height = {side: rows[side].shape[1] for side in rows}
    gram = np.empty((len(pairs), *(2 * [height[CONCEPT_SIDE] + height[RANDOM_SIDE]])))
    for side, part in parts.items():
        for index, block in zip(members[side], rows[side]):
            gram[users[side, index], part, part] = block @ block.T
    top, bottom = parts[CONCEPT_SIDE], parts[RANDOM_SIDE]
    for concept, concept_rows in zip(members[CONCEPT_SIDE], rows[CONCEPT_SIDE]):
        partners = [members[RANDOM_SIDE].index(pairs[i][RANDOM_SIDE]) for i in users[CONCEPT_SIDE, concept]]
        crosses = concept_rows @ _stacked(rows[RANDOM_SIDE], partners).T
        for k, i in enumerate(users[CONCEPT_SIDE, concept]):
            cross = crosses[:, k * height[RANDOM_SIDE] : (k + 1) * height[RANDOM_SIDE]]
            gram[i, top, bottom], gram[i, bottom, top] = cross, cross.T
    return gram


def _dual_weights(kernels: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """(problems, n): for each kernel K (the Gram matrix of the scaled rows with the intercept's 1s), the weights of
    the rows whose sum is the L2 logistic optimum. K = F F^T with F from K's pivoted Cholesky factor: F's rows are
    the rows' coordinates in an orthonormal basis of their span, and weights of that basis have the norm of their
    coordinates, so the regularisation is the full space's. Rows that repeat others add no dimension (the factor
    stops at K's rank). 10x faster than the eigendecomposition it replaced."""
    from scipy.linalg import solve_triangular

    factors = [_pivoted_cholesky(kernel) for kernel in kernels]
    features = np.zeros_like(kernels)
    for feature, (order, factor) in zip(features, factors):
        feature[order, : factor.shape[1]] = factor
    coordinates = _l2_logistic(features, signs)
    dual = np.zeros(kernels.shape[:2])
    for weights, solution, (order, factor) in zip(dual, coordinates, factors):
        rank = factor.shape[1]  # on the factor's leading rows, F^T weights = coordinates
        weights[order[:rank]] = solve_triangular(factor[:rank], solution[:rank], lower=True, trans="T")
    return dual


def _pivoted_cholesky(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``order``, ``factor``: ``kernel[order][:, order] == factor @ factor.T``, ``factor`` lower-trapezoidal with as
    many columns as the (positive semi-definite) kernel's rank (LAPACK's dpstrf, at its default tolerance)."""
    from scipy.linalg import lapack

    factor, pivots, rank, _ = lapack.dpstrf(kernel, lower=1)
    return pivots - 1, np.tril(factor)[:, :rank]


def _gathered(sets: Sequence[np.ndarray], indices: list[int], positions: np.ndarray) -> np.ndarray:
    """(len(indices), len(positions), D): the rows at ``positions`` of each of the ``indices``' sets."""
    gathered = np.empty((len(indices), len(positions), sets[indices[0]].shape[1]), dtype=np.float32)
    for out, index in zip(gathered, indices):
        out[:] = sets[index][positions]
    return gathered


def _stacked(blocks: np.ndarray, chosen: list[int]) -> np.ndarray:
    """The ``chosen`` blocks' rows one after another: a view when they are consecutive, as a concept's partners
    (every random set, in order) are."""
    if chosen == list(range(chosen[0], chosen[0] + len(chosen))):
        return blocks[chosen[0] : chosen[0] + len(chosen)].reshape(-1, blocks.shape[2])
    return blocks[chosen].reshape(-1, blocks.shape[2])


def _l2_logistic(features: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """For each problem p: argmin over g of sum_i log(1 + exp(-signs_i features[p, i] . g)) + |g|^2 / 2, by Newton's
    method with a backtracking line search, the problems in one batch (the objective is strongly convex: it converges
    in about ten steps, to machine precision). Hand-written because the problems are tiny (n x n, n the examples):
    scikit-learn's liblinear took 5.6 ms a CAV on the demo CNN, mostly its checks and set-up; the batch takes a
    fraction of that (benchmarks/tcav_bench.py, cav_fits)."""
    from scipy.special import expit

    def objective(f: np.ndarray, g: np.ndarray) -> np.ndarray:
        return np.logaddexp(0.0, -signs * _apply(f, g)).sum(axis=1) + np.einsum("pi,pi->p", g, g) / 2

    solution = np.zeros((features.shape[0], features.shape[2]))
    active = np.arange(len(features))  # the problems not yet converged
    for _ in range(MAX_NEWTON_STEPS):
        f, g = features[active], solution[active]
        away = expit(-signs * _apply(f, g))  # each example's probability of the wrong side
        gradient = g - (f.transpose(0, 2, 1) @ (signs * away)[..., None])[..., 0]
        going = np.linalg.norm(gradient, axis=1) > NEWTON_TOLERANCE * np.maximum(1.0, np.linalg.norm(g, axis=1))
        active, f, g, away, gradient = active[going], f[going], g[going], away[going], gradient[going]
        if not len(active):
            break
        hessian = np.eye(f.shape[2]) + (f.transpose(0, 2, 1) * (away * (1 - away))[:, None, :]) @ f
        step = np.linalg.solve(hessian, gradient[..., None])[..., 0]
        size, before, slope = np.ones(len(active)), objective(f, g), np.einsum("pi,pi->p", gradient, step)
        # a decrease this small (slope / 2 is the step's predicted decrease) is lost in the objective's rounding, which
        # would decide the search: there the full step is taken, as Newton's method converges quadratically near the
        # optimum (searching stalled a fit for 90 steps at a relative gradient of 3e-10)
        searching = slope > 1e-10 * np.maximum(1.0, before)
        while (shrink := searching & (objective(f, g - size[:, None] * step) > before - size * slope / 2)).any():
            size[shrink] /= 2
            searching &= size > 1e-10
        solution[active] = g - size[:, None] * step
    return solution


def _apply(f: np.ndarray, g: np.ndarray) -> np.ndarray:
    """features[p] @ g[p] for each problem p."""
    return (f @ g[..., None])[..., 0]


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


def layer_cavs(
    concepts: Mapping[str, np.ndarray], randoms: Sequence[np.ndarray], seed: int
) -> tuple[list[Cav], dict[str, list[Cav]]]:
    """At one layer, the null (random set i's CAV against random set i+1, cyclically, so that each random set stands
    in for a concept once; Kim et al. pair one random set with each of the others) and each concept's CAV against
    each random set, trained together (:func:`train_cavs`). They serve every class: train them once per layer."""
    _check_random_sets(randoms)
    sets = len(randoms)
    pairs = [(i, (i + 1) % sets) for i in range(sets)]
    pairs += [(sets + j, i) for j in range(len(concepts)) for i in range(sets)]
    cavs = train_cavs([*randoms, *concepts.values()], pairs, seed)
    return cavs[:sets], {name: cavs[sets * (j + 1) : sets * (j + 2)] for j, name in enumerate(concepts)}


def tcav_test(
    cavs: Mapping[str, Sequence[Cav]],
    null: Sequence[Cav],
    gradients: np.ndarray,
    alpha: float = 0.05,
    comparisons: int = 1,
) -> dict[str, TcavResult]:
    """Score each concept's CAVs (``cavs``: name -> its CAVs) and the null's on one class's ``gradients`` (N, D),
    and compare each concept's scores with the null's by a two-sided t-test (``scipy.stats.ttest_ind``): significant
    when p < alpha / comparisons (Bonferroni: ``comparisons`` counts the concepts x layers x classes tested)."""
    from scipy.stats import ttest_ind

    _check_test_settings(alpha, comparisons)
    _check_random_sets(null)
    groups = [*cavs.values(), null]
    directions = np.stack([cav.direction for group in groups for cav in group])
    _check_widths(gradients, [directions])
    # the fraction of inputs whose directional derivative along each CAV is positive, all CAVs in one product, in
    # the gradients' float32 (as Captum computes it)
    with one_blas_thread():
        derivatives = np.asarray(gradients, dtype=np.float32) @ directions.T
    scores = np.split(np.mean(derivatives > 0, axis=0), np.cumsum([len(group) for group in groups])[:-1])
    random_scores, random_accuracies = scores[-1], np.array([cav.accuracy for cav in null])
    threshold = alpha / comparisons
    results = {}
    for (name, concept), concept_scores in zip(cavs.items(), scores):
        with warnings.catch_warnings():  # scores that are all equal (often all 1.0) make scipy warn; the test holds
            warnings.simplefilter("ignore", RuntimeWarning)
            p_value = float(ttest_ind(concept_scores, random_scores).pvalue)
        results[name] = TcavResult(
            scores=concept_scores,
            accuracies=np.array([cav.accuracy for cav in concept]),
            random_scores=random_scores,
            random_accuracies=random_accuracies,
            p_value=p_value,
            threshold=threshold,
            significant=bool(p_value < threshold),  # a NaN p (no variance on either side) is not significant
        )
    return results


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
    For several classes, train :func:`layer_cavs` once and test each class's gradients."""
    _check_random_sets(randoms)
    _check_test_settings(alpha, comparisons)  # before the CAVs are trained, not after
    _check_widths(concept, [*randoms, gradients])
    concept = _first_rows(concept, examples, "the concept")
    randoms = [_first_rows(random, examples, f"random set {i}") for i, random in enumerate(randoms)]
    null, cavs = layer_cavs({"concept": concept}, randoms, seed)
    return tcav_test(cavs, null, gradients, alpha, comparisons)["concept"]


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
    del pooled  # the sets hold every row the fits need; the fits gather theirs, so two copies at most, not three
    null, cavs = layer_cavs(
        {name: layer_activations(session, x, layer, batch_size) for name, x in concepts.items()}, randoms, seed
    )
    results = {}
    for class_index, x in classes.items():
        gradients = class_logit_gradients(model, layer, x, class_index, batch_size, device, grid)
        for name, result in tcav_test(cavs, null, gradients, alpha, comparisons).items():
            results[name, class_index] = result
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
