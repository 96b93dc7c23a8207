"""The faithfulness correlation (Bhatt et al. 2020) of LIME explanations: agreement with Quantus 0.6 on its own
draws, its behaviour on models whose effects are known, determinism, and the settings it refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy.ndimage import gaussian_filter

from interp_audit.errors import SpecError
from interp_audit.spec import parse_spec
from interp_ops.lime import (
    ImageLime,
    LimeInputError,
    Segmentation,
    TabularLime,
    faithfulness_correlation,
    faithfulness_subset_size,
    faithfulness_subsets,
    predict_in_batches,
    subset_masks,
)
from interp_ops.lime.image import _segmented

SLIC = Segmentation("slic", n_segments=20)
HIDE = -4.0  # model-input value of a hidden pixel (outside the images' range), a constant the Quantus side can use


def smooth_images(count: int, height: int, width: int, channels: int, seed: int) -> np.ndarray:
    """Smooth random textures (N, H, W, C) in [0.2, 1]: display images with visible regions to segment."""
    noise = np.random.default_rng(seed).standard_normal((count, height, width, channels))
    noise = gaussian_filter(noise, sigma=(0, 3, 3, 0))
    low, high = noise.min(axis=(1, 2, 3), keepdims=True), noise.max(axis=(1, 2, 3), keepdims=True)
    return (0.2 + 0.8 * (noise - low) / (high - low)).astype(np.float32)


def to_input(display: np.ndarray) -> np.ndarray:
    return ((display - 0.5) / 0.25).transpose(0, 3, 1, 2).copy()


class TinyNet(torch.nn.Module):
    """A small conv net with seeded random weights, sharp enough that hiding superpixels moves its output."""

    def __init__(self, channels: int, classes: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(channels, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4)
        )
        self.head = torch.nn.Linear(8 * 16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 4.0 * self.head(self.features(x).flatten(1))


def torch_predict(net: torch.nn.Module):
    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(net(torch.from_numpy(batch)), dim=1).numpy()

    return predict


class OnOffModel(torch.nn.Module):
    """The model seen over superpixels, as Quantus sees a model: (B, 1, 1, d) on/off (1 shown, 0 hidden) ->
    the label probabilities of the image with the hidden superpixels at the fill, composited here in torch."""

    def __init__(self, net: torch.nn.Module, image: np.ndarray, segment_of_pixel: np.ndarray):
        super().__init__()
        self.net, self.image = net, torch.from_numpy(image)
        self.segment_of_pixel = torch.from_numpy(segment_of_pixel.reshape(image.shape[1:]))

    def forward(self, on_off: torch.Tensor) -> torch.Tensor:
        shown = on_off.reshape(len(on_off), -1)[:, self.segment_of_pixel] > 0.5  # (B, H, W)
        images = torch.where(shown[:, None], self.image[None], torch.tensor(HIDE))
        return torch.softmax(self.net(images), dim=1)


def lime_weights(result) -> np.ndarray:
    """(1, d) weights of the first explanation, features in segment-id order (the order LIME numbers them)."""
    label = result.explanations[0]["label"]
    mine = sorted((a["segment"], a["weight"]) for a in result.attributions if a["label"] == label)
    return np.array([[weight for _, weight in mine]])


def masked_probabilities(predict, x: np.ndarray, display: np.ndarray, subsets: np.ndarray) -> np.ndarray:
    """The model's probabilities (runs, K) on image 0 with each run's superpixels hidden, as explain_samples
    builds them."""
    _, _, (images, _, ids, _) = _segmented(x, display, HIDE, SLIC)
    masks = subset_masks(subsets, len(ids[0]))
    return predict_in_batches(predict, [images.masked(0, masks)], x.shape[1:], 64)[0]


@pytest.mark.parametrize(
    "channels, height, width, seed",
    [(3, 24, 24, 0), (1, 32, 40, 1), (3, 40, 28, 2)],
)
def test_equals_quantus_faithfulness_correlation_on_its_own_draws(channels, height, width, seed):
    import quantus

    net = TinyNet(channels, classes=5, seed=seed).eval()
    predict = torch_predict(net)
    display = smooth_images(1, height, width, channels, seed)
    x = to_input(display)
    result = ImageLime(predict).attribute(
        x, display, num_samples=400, hide=HIDE, segmentation=SLIC, stability_seeds=1, faithfulness_runs=0
    )
    coef, label = lime_weights(result), result.explanations[0]["label"]
    d = coef.shape[1]
    runs, k = 40, faithfulness_subset_size(d, 0.25)

    _, _, (_, _, _, segment_of_pixel) = _segmented(x, display, HIDE, SLIC)
    quantus_seed = 100 + seed
    np.random.seed(quantus_seed)  # Quantus draws each run's subset with np.random.choice, one call per run
    metric = quantus.FaithfulnessCorrelation(
        nr_runs=runs,
        subset_size=k,
        perturb_baseline=0.0,  # "black" is the input's minimum, which is 1 (shown) for an all-on vector
        normalise=True,
        abs=False,
        disable_warnings=True,
        return_aggregate=False,
    )
    theirs = metric(
        model=OnOffModel(net, x[0], segment_of_pixel[0]).eval(),
        x_batch=np.ones((1, 1, 1, d), dtype=np.float32),
        y_batch=np.array([label]),
        a_batch=coef.reshape(1, 1, 1, d).astype(np.float32),
        channel_first=True,
        device="cpu",
    )[0]

    state = np.random.RandomState(quantus_seed)
    subsets = np.stack([state.choice(d, k, replace=False) for _ in range(runs)])
    labels = np.array([label])
    ours = faithfulness_correlation(
        coef, predict(x)[0, labels], masked_probabilities(predict, x, display, subsets), subsets, labels
    )[0]
    assert ours is not None and abs(ours - theirs) < 1e-6, (ours, theirs)


# ------------------------------------------------------------------------------------------------ behaviour

GRID = 4  # a GRID x GRID grid of square superpixels
SIDE = 32
EFFECTS = np.linspace(0.0, 0.05, GRID * GRID)  # what each superpixel adds to class 1's probability when shown


def grid_segmentation(image: np.ndarray) -> np.ndarray:
    rows, cols = np.indices(image.shape[:2]) * GRID // SIDE
    return rows * GRID + cols


def additive_predict(x: np.ndarray) -> np.ndarray:
    """Class 1's probability is 0.1 plus the EFFECTS of the superpixels shown (not at HIDE), row by row."""
    shown = (x[:, 0] != HIDE).reshape(len(x), GRID, SIDE // GRID, GRID, SIDE // GRID).mean(axis=(2, 4))
    p = 0.1 + (shown.reshape(len(x), -1) * EFFECTS).sum(axis=1)  # not a matmul: BLAS may round by batch
    return np.stack([1.0 - p, p], axis=1)


def additive_settings(**changes) -> dict:
    settings = dict(num_samples=500, hide=HIDE, segmentation=grid_segmentation, stability_seeds=1, heldout_samples=0)
    return settings | changes


@pytest.fixture(scope="module")
def grid_images() -> tuple[np.ndarray, np.ndarray]:
    display = smooth_images(4, SIDE, SIDE, 3, seed=5)
    return to_input(display), display


def test_true_effects_score_near_one_and_reversed_near_minus_one(grid_images):
    x, display = grid_images[0][:1], grid_images[1][:1]
    result = ImageLime(additive_predict).attribute(x, display, [[1]], **additive_settings())
    assert result.explanations[0]["faithfulness_correlation"] > 0.99

    coef, labels = lime_weights(result), np.array([1])
    subsets = faithfulness_subsets(np.random.default_rng(0), GRID * GRID, 4, 50)
    masked = predict_in_batches(
        additive_predict,
        [_segmented(x, display, HIDE, grid_segmentation)[2][0].masked(0, subset_masks(subsets, 16))],
        x.shape[1:],
        64,
    )[0]
    base = additive_predict(x)[0, labels]
    exact = faithfulness_correlation(EFFECTS[None], base, masked, subsets, labels)[0]
    reversed_ = faithfulness_correlation(coef[:, ::-1], base, masked, subsets, labels)[0]
    assert exact == pytest.approx(1.0, abs=1e-9)
    assert reversed_ < -0.99


def test_a_model_that_ignores_the_image_gets_no_score(grid_images):
    def constant(x):
        return np.tile([0.3, 0.7], (len(x), 1))

    result = ImageLime(constant).attribute(*grid_images, **additive_settings())
    assert all(row["faithfulness_correlation"] is None for row in result.explanations)


def test_constant_sums_give_none_not_nan():
    subsets = np.array([[0], [1], [2]])
    masked = np.array([[0.5, 0.5], [0.4, 0.6], [0.3, 0.7]])
    scores = faithfulness_correlation(np.ones((1, 3)), np.array([0.8]), masked, subsets, np.array([1]))
    assert scores == [None]


def test_subsets_hide_something_and_leave_something_shown():
    assert [faithfulness_subset_size(d, 0.25) for d in (2, 3, 4, 10, 40)] == [1, 1, 1, 2, 10]
    assert faithfulness_subset_size(4, 0.9) == 3
    subsets = faithfulness_subsets(np.random.default_rng(0), 10, 4, 200)
    assert subsets.shape == (200, 4) and all(len(set(run)) == 4 for run in subsets)
    assert np.array_equal(subset_masks(subsets, 10).sum(axis=1), np.full(200, 6))


# ------------------------------------------------------------------------------------------------ determinism


def test_a_sample_scores_the_same_alone_and_in_a_batch(grid_images):
    x, display = grid_images
    batch = ImageLime(additive_predict, batch_size=7).attribute(x, display, **additive_settings())
    scores = [row["faithfulness_correlation"] for row in batch.explanations]
    assert all(score is not None for score in scores)
    for index in range(len(x)):
        alone = ImageLime(additive_predict, batch_size=64).attribute(
            x[index : index + 1], display[index : index + 1], sample_keys=[index], **additive_settings()
        )
        assert alone.explanations[0]["faithfulness_correlation"] == scores[index]


def test_runs_zero_leaves_the_column_null_and_the_weights_as_they_were(grid_images):
    x, display = grid_images
    on = ImageLime(additive_predict).attribute(x, display, **additive_settings(stability_seeds=2))
    off = ImageLime(additive_predict).attribute(x, display, **additive_settings(stability_seeds=2, faithfulness_runs=0))
    assert all(row["faithfulness_correlation"] is None for row in off.explanations)
    assert [a["weight"] for a in on.attributions] == [a["weight"] for a in off.attributions]
    strip = [
        {k: v for k, v in row.items() if k not in ("faithfulness_correlation", "segments")} for row in on.explanations
    ]
    assert strip == [
        {k: v for k, v in row.items() if k not in ("faithfulness_correlation", "segments")} for row in off.explanations
    ]


def test_tabular_rows_are_scored():
    training = np.random.default_rng(0).normal(size=(300, 4))

    def predict(rows):
        p = 1 / (1 + np.exp(-3 * rows[:, 0] - rows[:, 1]))
        return np.stack([1 - p, p], axis=1)

    explainer = TabularLime(predict, training, list("abcd"))
    result = explainer.attribute(training[:4], num_samples=500, faithfulness_subset=0.5)
    scores = [row["faithfulness_correlation"] for row in result.explanations]
    assert all(score is None or -1 <= score <= 1 for score in scores)
    assert any(score is not None for score in scores)
    off = explainer.attribute(training[:4], num_samples=500, faithfulness_runs=0)
    assert all(row["faithfulness_correlation"] is None for row in off.explanations)


# ------------------------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(faithfulness_runs=1), "faithfulness_runs=1 must be 0 (off) or >= 2"),
        (dict(faithfulness_runs=-3), "faithfulness_runs=-3 must be 0 (off) or >= 2"),
        (dict(faithfulness_subset=0.0), "faithfulness_subset=0.0 must be a fraction of the features in (0, 1)"),
        (dict(faithfulness_subset=1.0), "faithfulness_subset=1.0 must be a fraction of the features in (0, 1)"),
    ],
)
def test_the_explainer_refuses_bad_settings(grid_images, settings, message):
    with pytest.raises(LimeInputError) as error:
        ImageLime(additive_predict).attribute(*grid_images, **additive_settings(**settings))
    assert message in str(error.value)


def spec_with_lime(**lime) -> str:
    model = {"source": "onnx", "name": "m", "version": 3, "path": "m.onnx", "input": {"shape": [3, 8, 8]}}
    return yaml.safe_dump({"name": "a", "model": model, "data": "builtin:shapes", "ops": {"lime": lime}})


@pytest.mark.parametrize(
    "lime, message",
    [
        ({"faithfulness_subset": 0}, "ops.lime.faithfulness_subset: must be in (0, 1), 0 and 1 excluded (got 0.0)"),
        ({"faithfulness_subset": 1}, "ops.lime.faithfulness_subset: must be in (0, 1), 0 and 1 excluded (got 1.0)"),
        ({"faithfulness_subset": 1.5}, "ops.lime.faithfulness_subset: must be in (0, 1)"),
        ({"faithfulness_runs": -1}, "ops.lime.faithfulness_runs: must be 0 or more (got -1)"),
        ({"faithfulness_runs": 1}, "ops.lime.faithfulness_runs: must be 0 (off) or at least 2 runs"),
    ],
)
def test_the_spec_refuses_bad_faithfulness_settings(lime, message):
    with pytest.raises(SpecError) as error:
        parse_spec(spec_with_lime(**lime), Path("."))
    assert any(message in line for line in error.value.messages), error.value.messages


def test_the_spec_defaults_reach_the_task():
    settings = parse_spec(spec_with_lime(), Path(".")).spec.ops.lime.explainer_settings()
    assert (settings["faithfulness_runs"], settings["faithfulness_subset"]) == (50, 0.25)
