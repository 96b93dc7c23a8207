"""interp_ops.lime: the surrogate against sklearn and lime, agreement with the lime package, planted truth,
faithfulness scores, determinism, segment ids and error messages."""

from __future__ import annotations

import importlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter
from skimage import data as skdata
from skimage.transform import resize

from interp_ops.lime import ImageLime, Segmentation, TabularLime, curve_auc, weighted_ridge

SIZE = 48
REGION = (slice(8, 24), slice(8, 24))  # the only pixels the planted model looks at
HIDDEN = -2.0  # model-input value of a hidden pixel (display 0 under (v - 0.5) / 0.25)
SLIC = Segmentation("slic", n_segments=30)


def to_input(images: np.ndarray) -> np.ndarray:
    return ((np.asarray(images, dtype=np.float32) - 0.5) / 0.25).transpose(0, 3, 1, 2).copy()


def planted_predict(x: np.ndarray) -> np.ndarray:
    """Class 1 iff the red channel in REGION is bright; row by row, so batching cannot change a result."""
    region_mean = x[:, 0, REGION[0], REGION[1]].reshape(len(x), -1).mean(axis=1)
    p = 1.0 / (1.0 + np.exp(-2.0 * region_mean))
    return np.stack([1.0 - p, p], axis=1)


@pytest.fixture(scope="module")
def textures() -> np.ndarray:
    """Smooth random colour textures in [0.3, 1], so hiding any region pixel lowers the planted score."""
    noise = gaussian_filter(np.random.default_rng(0).standard_normal((8, SIZE, SIZE, 3)), sigma=(0, 3, 3, 0))
    low, high = noise.min(axis=(1, 2, 3), keepdims=True), noise.max(axis=(1, 2, 3), keepdims=True)
    return (0.3 + 0.7 * (noise - low) / (high - low)).astype(np.float32)


def fast_settings(**changes) -> dict:
    settings = dict(num_samples=300, segmentation=SLIC, stability_seeds=2, heldout_samples=50, hide=HIDDEN)
    return settings | changes


def segment_map_of(explanation: dict) -> np.ndarray:
    """The (height, width) superpixel ids of an image explanation row."""
    return explanation["segments"].reshape(explanation["height"], explanation["width"])


def top_segments(result, explanation: dict) -> list[int]:
    """The explanation's top-k superpixel ids, most important first, from its attribution rows."""
    mine = [
        (a["rank"], a["segment"])
        for a in result.attributions
        if (a["sample_index"], a["label"]) == (explanation["sample_index"], explanation["label"])
    ]
    return [segment for _, segment in sorted(mine)[: len(explanation["top_features"])]]


# ------------------------------------------------------------------------------------------------ surrogate


def test_weighted_ridge_equals_sklearn_and_lime_base():
    from sklearn.linear_model import Ridge

    lime_base = importlib.import_module("lime.lime_base")
    rng = np.random.default_rng(0)
    X = rng.integers(0, 2, size=(400, 12)).astype(float)
    X[0] = 1
    Y = rng.random((400, 3))
    weights = rng.random(400)
    coef, intercept, r2 = weighted_ridge(X, Y, weights)
    assert coef.shape == (3, 12) and intercept.shape == (3,) and r2.shape == (3,)
    for label in range(3):
        ridge = Ridge(alpha=1.0).fit(X, Y[:, label], sample_weight=weights)
        np.testing.assert_allclose(coef[label], ridge.coef_, atol=1e-6)
        np.testing.assert_allclose(intercept[label], ridge.intercept_, atol=1e-6)
        np.testing.assert_allclose(r2[label], ridge.score(X, Y[:, label], sample_weight=weights), atol=1e-6)
        # the kernel is the identity, so the "distances" are the weights; 'auto' with lime's image default
        # num_features=100000 selects every feature, like 'none'
        for selection, num_features in (("none", 12), ("auto", 100000)):
            base = lime_base.LimeBase(kernel_fn=lambda d: d)
            lime_intercept, pairs, score, local_pred = base.explain_instance_with_data(
                X, Y, weights, label, num_features=num_features, feature_selection=selection
            )
            lime_coef = np.zeros(12)
            for feature, weight in pairs:
                lime_coef[feature] = weight
            np.testing.assert_allclose(coef[label], lime_coef, atol=1e-6)
            np.testing.assert_allclose(intercept[label], lime_intercept, atol=1e-6)
            np.testing.assert_allclose(r2[label], score, atol=1e-6)
            np.testing.assert_allclose(intercept[label] + coef[label].sum(), local_pred[0], atol=1e-6)


# ----------------------------------------------------------------------------------- against the package


def test_top_segments_agree_with_the_lime_package():
    lime_image = importlib.import_module("lime.lime_image")
    size = 64
    photo = resize(skdata.astronaut() / 255.0, (size, size), anti_aliasing=True)
    # ~40 quickshift segments, relabelled 0..K-1 because the package silently mis-handles other ids
    segment_map = np.unique(Segmentation(kernel_size=1)(photo), return_inverse=True)[1].reshape(size, size)
    weights = np.random.default_rng(1).normal(size=(3 * 8 * 8, 3))

    def predict(x: np.ndarray) -> np.ndarray:  # a linear classifier on an 8x8 grid of mean colours
        pooled = x.reshape(len(x), 3, 8, size // 8, 8, size // 8).mean(axis=(3, 5)).reshape(len(x), -1)
        logits = pooled @ weights
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)

    @dataclass(frozen=True)
    class Fixed(Segmentation):
        def __call__(self, image):
            return segment_map

    x = to_input(photo[None])
    label = int(predict(x).argmax())
    overlaps = []
    for seed in range(3):
        ours = ImageLime(predict).attribute(
            x,
            photo[None].astype(np.float32),
            [[label]],
            segmentation=Fixed(),
            seed=seed,
            stability_seeds=1,
            heldout_samples=0,
        )
        theirs = lime_image.LimeImageExplainer(random_state=seed).explain_instance(
            photo,
            lambda images: predict(to_input(images)),
            labels=(label,),
            top_labels=None,
            num_samples=1000,
            segmentation_fn=lambda image: segment_map,
        )
        their_top = [f for f, _ in sorted(theirs.local_exp[label], key=lambda pair: -pair[1])[:5]]
        overlaps.append(len(set(top_segments(ours, ours.explanations[0])) & set(their_top)))
    assert np.mean(overlaps) >= 3, overlaps


def test_tabular_bins_are_named_as_the_package_names_them():
    lime_tabular = importlib.import_module("lime.lime_tabular")
    training = np.random.default_rng(0).normal(size=(200, 3)) * [1, 10, 100]
    training[:, 2] = np.round(training[:, 2] / 100)  # ties, so some quartiles coincide
    names = ["a", "b", "c"]
    ours = TabularLime(lambda rows: np.ones((len(rows), 1)), training, names)
    theirs = lime_tabular.LimeTabularExplainer(training, feature_names=names, discretize_continuous=True)
    assert ours.bins.names == [theirs.discretizer.names[f] for f in range(3)]


def test_tabular_weights_track_the_package_on_breast_cancer():
    lime_tabular = importlib.import_module("lime.lime_tabular")
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    dataset = load_breast_cancer()
    X, names = dataset.data, [str(name) for name in dataset.feature_names]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, dataset.target)
    ours = TabularLime(model.predict_proba, X, names).attribute(X[:3], stability_seeds=1, heldout_samples=0)
    # 'none': every feature in the surrogate, as ours does
    explainer = lime_tabular.LimeTabularExplainer(X, feature_names=names, feature_selection="none", random_state=0)
    for explanation in ours.explanations:
        i, label = explanation["sample_index"], explanation["label"]
        theirs = dict(
            explainer.explain_instance(X[i], model.predict_proba, labels=(label,), num_features=len(names)).local_exp[
                label
            ]
        )
        our_weights = {a["feature"]: a["weight"] for a in ours.attributions if a["sample_index"] == i}
        correlation = np.corrcoef([our_weights[n] for n in names], [theirs[f] for f in range(len(names))])[0, 1]
        assert correlation > 0.9


# --------------------------------------------------------------------------------------- planted truth


def test_top_segment_lies_in_the_planted_region(textures):
    result = ImageLime(planted_predict).attribute(
        to_input(textures), textures, [[1]] * len(textures), **fast_settings()
    )
    region = np.zeros((SIZE, SIZE), bool)
    region[REGION] = True
    overlaps, among_largest = [], []
    for explanation in result.explanations:
        ids, pixels_in_region = np.unique(segment_map_of(explanation)[region], return_counts=True)
        top = top_segments(result, explanation)[0]
        overlaps.append(top in ids)
        among_largest.append(top in ids[np.argsort(-pixels_in_region)[:2]])
    assert all(overlaps)
    assert np.mean(among_largest) >= 0.9


def test_deletion_and_insertion_beat_a_random_order(textures):
    x = to_input(textures)
    result = ImageLime(planted_predict).attribute(x, textures, [[1]] * len(textures), **fast_settings())
    rng = np.random.default_rng(0)
    for index, explanation in enumerate(result.explanations):
        ids = np.unique(segment_map_of(explanation))
        order = rng.permutation(ids)
        steps = [np.isin(segment_map_of(explanation), order[:k]) for k in range(len(ids) + 1)]
        removed = np.stack([np.where(hidden, HIDDEN, x[index]) for hidden in steps])
        added = np.stack([np.where(hidden, x[index], HIDDEN) for hidden in steps])
        random_deletion = curve_auc(planted_predict(removed)[:, 1])
        random_insertion = curve_auc(planted_predict(added)[:, 1])
        assert explanation["deletion_auc"] < random_deletion
        assert explanation["insertion_auc"] > random_insertion


def test_tabular_finds_the_two_features_the_model_uses():
    rng = np.random.default_rng(0)
    training = rng.normal(size=(500, 8))
    names = [f"f{i}" for i in range(8)]

    def predict(rows):
        p = 1.0 / (1.0 + np.exp(-2.0 * (rows[:, 0] + rows[:, 1])))
        return np.stack([1.0 - p, p], axis=1)

    rows = training[:40]
    result = TabularLime(predict, training, names).attribute(
        rows, num_samples=2000, stability_seeds=1, heldout_samples=0
    )
    by_size = {}
    for row in result.attributions:
        by_size.setdefault(row["sample_index"], []).append((abs(row["weight"]), row["feature"]))
    largest_two = [{name for _, name in sorted(pairs, reverse=True)[:2]} for pairs in by_size.values()]
    assert np.mean([top == {"f0", "f1"} for top in largest_two]) >= 0.9
    # where both features push towards the explained class, they also rank first and second
    agree = np.sign(rows[:, 0]) == np.sign(rows[:, 1])
    tops = [set(e["top_features"][:2]) for e, same in zip(result.explanations, agree) if same]
    assert np.mean([top == {"f0", "f1"} for top in tops]) >= 0.9


# -------------------------------------------------------------------------------------------- the tables


def test_explanation_fields_are_consistent(textures):
    x = to_input(textures[:2])
    result = ImageLime(planted_predict).attribute(x, textures[:2], **fast_settings(top_k=3))
    probabilities = planted_predict(x)
    for explanation in result.explanations:
        i, label = explanation["sample_index"], explanation["label"]
        weights = [a["weight"] for a in result.attributions if a["sample_index"] == i]
        assert label == probabilities[i].argmax()
        assert explanation["probability"] == pytest.approx(probabilities[i, label])
        assert explanation["local_prediction"] == pytest.approx(explanation["intercept"] + sum(weights))
        assert explanation["prediction_gap"] == pytest.approx(
            abs(explanation["local_prediction"] - explanation["probability"])
        )
        assert len(explanation["top_features"]) == 3 and explanation["num_features"] == len(weights)
        assert 0 <= explanation["stability"] <= 1 and explanation["r2_heldout"] is not None
        overlay = Image.open(io.BytesIO(explanation["overlay_png"]))
        assert overlay.format == "PNG" and overlay.size == (SIZE, SIZE)
    ranks = sorted((a["rank"], -a["weight"]) for a in result.attributions if a["sample_index"] == 0)
    assert [r for r, _ in ranks] == list(range(1, len(ranks) + 1))
    assert [w for _, w in ranks] == sorted(w for _, w in ranks)
    assert sum(a["area_fraction"] for a in result.attributions if a["sample_index"] == 0) == pytest.approx(1.0)
    unscored = ImageLime(planted_predict).attribute(
        x, textures[:2], **fast_settings(stability_seeds=1, heldout_samples=0)
    )
    assert all(e["stability"] is None and e["r2_heldout"] is None for e in unscored.explanations)


def test_perturbed_pixels_are_exactly_the_input_or_the_fill(textures):
    seen = []

    def recording_predict(x):
        seen.append(x.copy())
        return planted_predict(x)

    x = to_input(textures[:1])
    ImageLime(recording_predict).attribute(x, textures[:1], **fast_settings(segmentation=ArbitraryIds()))
    rows = np.concatenate(seen)
    assert sum(np.array_equal(row, x[0]) for row in rows) >= 2  # the input itself, then perturbation row 0
    assert np.all((rows == x[0]) | (rows == HIDDEN))


class ScatteredIds(Segmentation):
    """Segments in many pieces: ids 3, 13, 23, 33 cycle over 3x5 tiles, so each id recurs across rows."""

    def __call__(self, image):
        rows, cols = np.indices(image.shape[:2])
        return ((rows // 3 + cols // 5) % 4) * 10 + 3


def test_each_segment_is_shown_or_filled_with_its_own_mean_as_a_whole():
    """Perturbed inputs are built from runs of pixels: every piece of a segment must follow its mask bit."""
    rng = np.random.default_rng(1)
    display = rng.random((1, 20, 36, 1)).astype(np.float32)
    x = rng.standard_normal((1, 2, 20, 36)).astype(np.float32)  # two channels, not the display's one
    seen = []

    def recording_predict(batch):
        seen.append(batch.copy())
        return np.stack([batch.mean(axis=(1, 2, 3)), -batch.mean(axis=(1, 2, 3))], axis=1)

    ImageLime(recording_predict, batch_size=7).attribute(
        x, display, num_samples=60, stability_seeds=1, heldout_samples=0, segmentation=ScatteredIds()
    )
    segments = ScatteredIds()(display[0])
    states = set()
    for row in np.concatenate(seen):
        for segment in np.unique(segments):
            pixels, source = row[:, segments == segment], x[0][:, segments == segment]
            if np.array_equal(pixels, source):
                states.add("shown")
                continue
            assert np.allclose(pixels, source.mean(axis=1, keepdims=True), rtol=0, atol=1e-6), segment
            states.add("hidden")
    assert states == {"shown", "hidden"}


# ------------------------------------------------------------------------------------------- determinism


def numbers(result) -> list:
    """Every value of both tables, for exact comparison (segment maps as lists)."""
    return [
        [value.tolist() if isinstance(value, np.ndarray) else value for value in row.values()]
        for row in result.explanations + result.attributions
    ]


def rows_of(result, sample_index: int) -> list:
    return [row for row in numbers(result) if row[0] == sample_index]


def weights(result) -> np.ndarray:
    return np.array([a["weight"] for a in result.attributions])


def test_same_seed_is_bit_identical_and_another_seed_differs(textures):
    x, display = to_input(textures[:3]), textures[:3]
    first, again, other = (
        ImageLime(planted_predict).attribute(x, display, **fast_settings(seed=seed)) for seed in (0, 0, 1)
    )
    assert numbers(first) == numbers(again)
    assert np.array_equal(weights(first), weights(again))
    assert not np.array_equal(weights(first), weights(other))


def test_results_do_not_depend_on_batch_size_or_the_other_samples(textures):
    x = to_input(textures[:3])
    whole = ImageLime(planted_predict, batch_size=256).attribute(x, textures[:3], **fast_settings())
    small_batches = ImageLime(planted_predict, batch_size=7).attribute(x, textures[:3], **fast_settings())
    assert numbers(whole) == numbers(small_batches)
    # sample 1 keeps its place but gets another neighbour; sample 0 loses its followers
    others = ImageLime(planted_predict).attribute(to_input(textures[[5, 1]]), textures[[5, 1]], **fast_settings())
    alone = ImageLime(planted_predict).attribute(x[:1], textures[:1], **fast_settings())
    assert rows_of(others, 1) == rows_of(whole, 1)
    assert rows_of(alone, 0) == rows_of(whole, 0)


def test_tabular_is_deterministic_and_batch_independent():
    training = np.random.default_rng(0).normal(size=(200, 4))

    def predict(rows):
        p = 1 / (1 + np.exp(-rows[:, 0]))
        return np.stack([1 - p, p], axis=1)

    def run(batch_size, seed):
        explainer = TabularLime(predict, training, list("abcd"), batch_size=batch_size)
        return explainer.attribute(training[:3], seed=seed, num_samples=500, heldout_samples=50)

    assert numbers(run(256, 0)) == numbers(run(7, 0))
    assert numbers(run(256, 0)) != numbers(run(256, 1))


# ------------------------------------------------------------------------------------------- segment ids


@dataclass(frozen=True)
class ArbitraryIds(Segmentation):
    """Three vertical bands with ids 5 (columns 0..19), 17 (20..33) and 900 (34..47)."""

    def __call__(self, image):
        bands = np.full(image.shape[:2], 900, dtype=np.int64)
        bands[:, :20], bands[:, 20:34] = 5, 17
        return bands


def test_segment_ids_are_reported_as_given(textures):
    result = ImageLime(planted_predict).attribute(
        to_input(textures[:2]), textures[:2], **fast_settings(segmentation=ArbitraryIds(), top_k=2)
    )
    assert {a["segment"] for a in result.attributions} == {5, 17, 900}
    assert all(a["feature"] == str(a["segment"]) for a in result.attributions)
    # REGION (columns 8..23) lies mostly in band 5, partly in band 17, not at all in band 900
    assert all(e["top_features"] == ["5", "17"] for e in result.explanations)
    assert all(top_segments(result, e) == [5, 17] for e in result.explanations)
    fractions = {a["segment"]: a["area_fraction"] for a in result.attributions if a["sample_index"] == 0}
    assert fractions == pytest.approx({5: 20 / 48, 17: 14 / 48, 900: 14 / 48})
    for explanation in result.explanations:  # the map holds the ids as given, pixel for pixel
        assert explanation["segments"].dtype == np.int64 and (explanation["height"], explanation["width"]) == (48, 48)
        assert np.array_equal(segment_map_of(explanation), ArbitraryIds()(textures[0]))


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(num_samples=1), "num_samples=1 must be >= 2"),
        (dict(kernel_width=0.0), "kernel_width=0.0 must be > 0"),
        (dict(top_k=0), "top_k=0 must be >= 1"),
        (
            dict(segmentation=Segmentation("slic", n_segments=1)),
            "segmentation gave 1 segment for sample 0; lower kernel_size/max_dist or raise n_segments",
        ),
        (dict(hide="black"), "hide='black' must be 'mean' or a number"),
    ],
)
def test_image_errors_name_the_parameter_and_the_fix(textures, settings, message):
    flat = np.full((1, SIZE, SIZE, 3), 0.5, dtype=np.float32)  # one colour: slic can only find one segment
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        ImageLime(planted_predict).attribute(to_input(flat), flat, **fast_settings() | settings)


def test_unknown_segmentation_method_is_refused():
    with pytest.raises(ValueError, match="segmentation method 'felzenszwalb' is unknown; use 'quickshift' or 'slic'"):
        Segmentation("felzenszwalb")


def test_label_outside_the_classes_is_refused(textures):
    with pytest.raises(ValueError, match=r"labels\[1\]=\[2\] must be distinct classes in \[0, 2\)"):
        ImageLime(planted_predict).attribute(to_input(textures[:2]), textures[:2], [[1], [2]], **fast_settings())
    training = np.random.default_rng(0).normal(size=(50, 2))
    with pytest.raises(ValueError, match=r"labels\[0\]=\[-1\] must be distinct classes"):
        TabularLime(lambda rows: np.full((len(rows), 2), 0.5), training, ["a", "b"]).attribute(training[:1], [[-1]])
    with pytest.raises(ValueError, match="kernel_width=-1 must be > 0"):
        TabularLime(lambda rows: np.full((len(rows), 2), 0.5), training, ["a", "b"]).attribute(
            training[:1], kernel_width=-1
        )


def test_slic_that_merges_a_scene_into_one_segment_segments_it_again_without_the_connectivity_step():
    """skimage's SLIC connectivity step merges this builtin scene whole; an audit of it must not fail for that."""
    from skimage.segmentation import slic

    from interp_ops import datasets

    scene = datasets.load_samples("builtin:shapes?split=train&n=1024", Path("."), 0).x[353]
    assert len(np.unique(slic(scene.astype(np.float64), n_segments=30, compactness=10))) == 1  # the trigger holds
    assert len(np.unique(SLIC(scene))) > 10
