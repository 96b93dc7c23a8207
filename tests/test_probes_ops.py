"""Linear probes (issue 19, the computation; not yet an audit method): the planted truth on the demo models, agreement
with scikit-learn's cross-validation and with torch's activations, streaming, determinism, attributes, bad input."""

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from test_concepts import write_minimal

from interp_ops import builtin_data, onnx_bundle
from interp_ops.concepts import load_concepts
from interp_ops.datasets import to_model_input
from interp_ops.demo_models import DEMO_INPUT, DEMO_LAYERS, shapes_cnn
from interp_ops.layer_capture import LayerCapture
from interp_ops.probes import ProbeError, column_classes, concept_presence, pooled_activations, probe
from interp_ops.samples import Samples
from interp_ops.token_grid import TokenGrid

pytestmark = pytest.mark.usefixtures("one_torch_thread")
GRAY_INPUT = dict(shape=(1, 28, 28), value_range=(0, 1), mean=[0.5], std=[0.5])
DEMO = dict(
    shape=tuple(DEMO_INPUT["shape"]),
    value_range=tuple(DEMO_INPUT["range"]),
    mean=DEMO_INPUT["mean"],
    std=DEMO_INPUT["std"],
)
GRAY_LAYERS = ["body.conv1", "body.act2"]


def model_input(images: np.ndarray, shape, value_range, mean, std) -> np.ndarray:
    samples = Samples(ids=[str(i) for i in range(len(images))], x=images, labels=None, masks=None, class_names=None)
    return to_model_input(samples, shape, value_range, mean, std)


def session_of(model: torch.nn.Module, shape, layers: list[str], grids=None):
    return onnx_bundle.make_session(onnx_bundle.export_torch(model, shape, layers, grids), "cpu", intra_op_threads=1)


def demo_session(weights_path: Path):
    model = shapes_cnn()
    model.load_state_dict(load_file(weights_path))
    return session_of(model.eval(), DEMO["shape"], DEMO_LAYERS)


# --- planted truth -----------------------------------------------------------------------------------------------

# at 300 scenes the shortcut model's selectivity at features.4 ranged 0.28-0.35 over five draws; at 600, 0.41-0.49
PLANTED_SCENES = 600


@pytest.fixture(scope="module")
def planted_data():
    """Scenes without a patch and their classes; the same scenes with a corner patch of a colour drawn independently
    of their class, and that colour's index. Independence matters: with the shortcut's own data (patch = class) a
    probe for the colour would score wherever the class is readable."""
    images, _, labels = builtin_data.shapes("val", PLANTED_SCENES, seed=500)
    colours = np.random.default_rng(500).integers(len(builtin_data.PATCH_COLORS), size=PLANTED_SCENES)
    patched = images.copy()
    patched[:, : builtin_data.PATCH_SIZE, : builtin_data.PATCH_SIZE] = builtin_data.PATCH_COLORS[colours][:, None, None]
    return dict(plain=model_input(images, **DEMO), labels=labels, patched=model_input(patched, **DEMO), colours=colours)


@pytest.mark.slow
def test_the_patch_colour_is_readable_in_the_shortcut_model_and_the_class_grows_with_depth_in_the_honest_one(
    trained, planted_data
):
    """Figures (600 scenes, 5 folds, seed 0), selectivity (accuracy mean +- std over folds, control) at features.4 /
    .8 / .12, chance 0.343 (colour) and 0.352 (class):
    patch colour, shortcut model 0.452 (0.812 +- 0.033, 0.360) / 0.663 (0.988 +- 0.007, 0.325) / 0.632 (1.000, 0.368);
    patch colour, honest model 0.515 (0.850 +- 0.022, 0.335) / 0.395 (0.765 +- 0.030, 0.370) / 0.260 (0.587, 0.327);
    class, honest model 0.043 (0.377 +- 0.039, 0.333) / 0.107 (0.435 +- 0.030, 0.328) / 0.592 (0.887 +- 0.023, 0.295);
    class, shortcut model 0.072 / 0.097 / 0.115 (accuracy 0.390 / 0.388 / 0.415).
    Early layers read colour in both models (features.4 is the second convolution); only the shortcut model carries
    the patch's colour to its last layer, where the honest model reads the class instead."""
    first, last = DEMO_LAYERS[0], DEMO_LAYERS[-1]
    shortcut, honest = (demo_session(trained[name].weights_path) for name in ("shortcut", "honest"))
    colour = {
        (name, layer): probe(pooled_activations(session, planted_data["patched"], layer), planted_data["colours"])
        for name, session in (("shortcut", shortcut), ("honest", honest))
        for layer in (first, last)
    }
    assert colour["shortcut", first].selectivity >= 0.3, colour
    assert colour["shortcut", last].selectivity >= colour["honest", last].selectivity + 0.2, colour

    classes = {
        layer: probe(pooled_activations(honest, planted_data["plain"], layer), planted_data["labels"])
        for layer in (first, last)
    }
    assert classes[last].accuracy_mean >= classes[first].accuracy_mean + 0.3, classes
    assert classes[last].selectivity >= 0.4, classes
    assert classes[first].chance == pytest.approx(np.bincount(planted_data["labels"]).max() / PLANTED_SCENES)


# --- agreement with scikit-learn and torch --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gray():
    """gray_net (1x28x28, ten classes, a model not shaped like the demo) on 90 scenes: its session and features."""
    from user_models import gray_net

    model = gray_net().eval()
    images, _, labels = builtin_data.shapes("val", 90, seed=40)
    x = model_input(images, **GRAY_INPUT)
    session = session_of(model, GRAY_INPUT["shape"], GRAY_LAYERS)
    return dict(model=model, session=session, x=x, labels=labels, features=pooled_activations(session, x, "body.act2"))


def test_accuracies_are_scikit_learns_cross_validation_of_the_same_probe_and_folds(gray):
    features, labels = gray["features"], gray["labels"]
    result = probe(features, labels, folds=4, seed=3)
    folds = list(StratifiedKFold(4, shuffle=True, random_state=3).split(features, labels))
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    np.testing.assert_array_equal(result.accuracies, cross_val_score(pipeline, features, labels, cv=folds))
    control = np.random.default_rng(3).permutation(labels)
    np.testing.assert_array_equal(result.control_accuracies, cross_val_score(pipeline, features, control, cv=folds))
    assert result.chance == np.bincount(labels).max() / len(labels)
    assert result.selectivity == pytest.approx(result.accuracies.mean() - result.control_accuracies.mean())


def test_pooled_activations_are_torchs_channel_means(gray):
    """Convolution maps: ONNX Runtime's pooling against torch's forward hooks averaged over H and W."""
    with torch.no_grad(), LayerCapture(gray["model"], GRAY_LAYERS) as capture:
        gray["model"](torch.from_numpy(gray["x"]))
    for layer in GRAY_LAYERS:
        expected = capture.outputs[layer].mean(dim=(2, 3)).numpy()
        pooled = pooled_activations(gray["session"], gray["x"], layer, batch_size=32)
        assert pooled.shape == expected.shape == (90, {"body.conv1": 4, "body.act2": 6}[layer])
        np.testing.assert_allclose(pooled, expected, atol=1e-5)


def test_a_token_layer_pools_its_patch_tokens_and_a_flat_layer_stays_as_it_is():
    """A transformer block's tokens (class token first) are read as their map: the mean over the patch tokens per
    dim, the class token left out. A (B, D) layer (an MLP's hidden layer) is its own feature."""
    from token_models import IMAGE, planted_vit
    from user_models import tabular_mlp

    vit = planted_vit().eval()
    grids = {"blocks.1": TokenGrid(12, 12, skip=1)}
    x = np.random.default_rng(0).random((6, 3, IMAGE, IMAGE), dtype=np.float32)
    with torch.no_grad(), LayerCapture(vit, ["blocks.1"]) as capture:
        vit(torch.from_numpy(x))
    tokens = capture.outputs["blocks.1"].numpy()
    assert tokens.shape == (6, 1 + 144, 8)
    pooled = pooled_activations(session_of(vit, (3, IMAGE, IMAGE), ["blocks.1"], grids), x, "blocks.1", batch_size=4)
    np.testing.assert_allclose(pooled, tokens[:, 1:].mean(axis=1), atol=1e-5)

    mlp = tabular_mlp().eval()
    rows = np.random.default_rng(1).standard_normal((10, 30)).astype(np.float32)
    with torch.no_grad(), LayerCapture(mlp, ["act"]) as capture:
        mlp(torch.from_numpy(rows))
    hidden = pooled_activations(session_of(mlp, (30,), ["act"]), rows, "act", batch_size=3)
    np.testing.assert_allclose(hidden, capture.outputs["act"].numpy(), atol=1e-5)


# --- streaming and determinism ------------------------------------------------------------------------------------


class RowCounting:
    """An ONNX Runtime session that records how many rows each run was given (the layer's maps held at once)."""

    def __init__(self, session):
        self.session = session
        self.rows: list[int] = []

    def __getattr__(self, name):
        return getattr(self.session, name)

    def run(self, outputs, feeds):
        self.rows.extend(len(value) for value in feeds.values())
        return self.session.run(outputs, feeds)


def test_activations_stream_a_batch_at_a_time_and_the_batch_size_changes_nothing(gray):
    small, large = RowCounting(gray["session"]), RowCounting(gray["session"])
    by_seven = pooled_activations(small, gray["x"], "body.conv1", batch_size=7)
    by_sixty_four = pooled_activations(large, gray["x"], "body.conv1", batch_size=64)
    assert small.rows == [7] * 12 + [6] and large.rows == [64, 26]
    np.testing.assert_allclose(by_seven, by_sixty_four, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(
        probe(by_seven, gray["labels"]).accuracies, probe(by_sixty_four, gray["labels"]).accuracies
    )


def test_the_same_seed_gives_the_same_result_and_another_seed_other_folds(gray):
    first, second, other = (probe(gray["features"], gray["labels"], seed=seed) for seed in (5, 5, 6))
    np.testing.assert_array_equal(first.accuracies, second.accuracies)
    np.testing.assert_array_equal(first.control_accuracies, second.control_accuracies)
    assert not np.array_equal(first.accuracies, other.accuracies)
    assert not np.array_equal(first.control_accuracies, other.control_accuracies)


# --- attributes ---------------------------------------------------------------------------------------------------


def test_concept_presence_reads_pixel_masks_and_image_level_labels(tmp_path):
    """The minimal Broden folder: image 0 has masks of sky (5) and tree (300) and is 'wet'; image 1 is all tree and
    'wet' and 'dry'; image 2 has nothing. Read in batches of 2, so the answer spans batches."""
    concepts = load_concepts(str(write_minimal(tmp_path / "broden")))
    expected = {"sky": [1, 0, 0], "tree": [1, 1, 0], "wet": [1, 1, 0], "dry": [0, 1, 0]}
    for label, presence in expected.items():
        np.testing.assert_array_equal(concept_presence(concepts, label, batch_size=2), presence)
    with pytest.raises(
        ProbeError, match=r"no concept named 'cloud' in the concept set; its concepts are: dry, sky, tree, wet"
    ):
        concept_presence(concepts, "cloud")


def test_column_classes_take_few_values_as_they_are_and_bin_many_by_quantile():
    x, _ = builtin_data.tabular_planted("val", 200, seed=0)
    names = builtin_data.TABULAR_FEATURE_NAMES
    income = x[:, names.index("income")]
    halves = column_classes(x, names, "income")
    np.testing.assert_array_equal(halves, income >= np.median(income))
    quarters = column_classes(x, names, "income", bins=4)
    np.testing.assert_array_equal(np.bincount(quarters), [50, 50, 50, 50])
    assert (np.diff(income[np.argsort(income)]) >= 0).all() and (np.diff(quarters[np.argsort(income)]) >= 0).all()
    x[:, names.index("region_code")] = np.array([7.0, -1.0, 3.0])[np.arange(200) % 3]  # three codes: three classes
    np.testing.assert_array_equal(column_classes(x, names, "region_code")[:4], [2, 0, 1, 2])
    with pytest.raises(ProbeError, match=r"column 'salary' does not exist in the data \(its columns: age, income, "):
        column_classes(x, names, "salary")


# --- bad input ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "features, labels, folds, message",
    [
        (np.zeros((10, 3)), np.arange(9) % 2, 5, r"features \[10, 3\] and labels \[9\] do not match"),
        (np.zeros(10), np.arange(10) % 2, 5, r"features \[10\] and labels \[10\] do not match"),
        (
            np.zeros((10, 3)),
            np.ones(10, dtype=int),
            5,
            r"the labels hold 1 class\(es\) \[1\]: a probe needs at least 2",
        ),
        (np.zeros((10, 3)), np.r_[np.zeros(6), np.ones(4)], 5, "class 1.0 has 4 inputs, fewer than the 5 folds"),
        (np.zeros((10, 3)), np.arange(10) % 2, 1, "folds=1; cross-validation needs at least 2"),
        (np.zeros((0, 3)), np.zeros(0), 5, r"the labels hold 0 class\(es\) \[\]"),
        (np.full((10, 3), np.nan), np.arange(10) % 2, 5, "the features hold NaN or infinite values"),
    ],
)
def test_bad_probe_input_is_refused_with_a_message(features, labels, folds, message):
    with pytest.raises(ProbeError, match=message):
        probe(features, labels, folds=folds)


def test_a_layer_missing_from_the_graph_is_refused_with_the_graphs_layers(gray):
    with pytest.raises(
        ProbeError, match=r"layer 'body.act1' is not an output .* \(its layers: \['body.conv1', 'body.act2'\]\)"
    ):
        pooled_activations(gray["session"], gray["x"], "body.act1")
