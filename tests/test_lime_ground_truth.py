"""LIME finds what was planted: the object (honest model), the corner patch (shortcut model), the two
features that decide the tabular label. The models are the real demo models, run through ONNX Runtime."""

from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from interp_ops import lime, onnx_bundle
from interp_ops.builtin_data import PATCH_SIZE, PLANTED_FEATURES
from interp_ops.datasets import load_samples, to_model_input
from interp_ops.demo_models import DEMO_INPUT, TABULAR_DEMO_INPUT, planted_mlp, shapes_cnn

pytestmark = pytest.mark.slow
SAMPLES = 30


def onnx_predict(module, input_shape):
    session = onnx_bundle.make_session(onnx_bundle.export_torch(module.eval(), input_shape, []), "cpu")
    return lambda batch: onnx_bundle.softmax(onnx_bundle.run_session(session, batch)["logits"])


def image_model(weights: Path):
    module = shapes_cnn()
    module.load_state_dict(load_file(weights))
    return onnx_predict(module, tuple(DEMO_INPUT["shape"]))


# The shapes are flat-coloured: lime's default mean fill would repaint a hidden shape in its own colour and hide
# nothing (the pointing game then drops to 0.4), so hidden superpixels are filled with grey (0 after normalization).
SHAPES_OPTIONS = dict(hide=0.0, segmentation=lime.Segmentation(method="slic", n_segments=30))


def explain_shapes(predict, uri):
    samples = load_samples(uri, Path("."), 0)
    x = to_model_input(samples, tuple(DEMO_INPUT["shape"]), DEMO_INPUT["range"], DEMO_INPUT["mean"], DEMO_INPUT["std"])
    result = lime.ImageLime(predict).attribute(
        x, samples.x, num_samples=1000, stability_seeds=1, heldout_samples=0, **SHAPES_OPTIONS
    )
    return samples, result


def top_segment_mask(result, explanation: dict) -> np.ndarray:
    """(H, W) bool: the pixels of the explanation's first-ranked superpixel."""
    (top,) = [
        a["segment"]
        for a in result.attributions
        if (a["sample_index"], a["label"], a["rank"]) == (explanation["sample_index"], explanation["label"], 1)
    ]
    return (explanation["segments"] == top).reshape(explanation["height"], explanation["width"])


def test_pointing_game_on_the_honest_model(trained):
    samples, result = explain_shapes(
        image_model(trained["honest"].weights_path), f"builtin:shapes?split=val&n={SAMPLES}"
    )
    hits = []
    for row in result.explanations:
        i = row["sample_index"]
        masks = samples.masks[i]
        areas = np.bincount(masks.ravel())[1:]
        labelled_object = masks == 1 + int(np.argmax(areas))  # the label is the largest object
        top_segment = top_segment_mask(result, row)
        hits.append(bool((top_segment & labelled_object).any()))
    assert np.mean(hits) >= 0.8, np.mean(hits)


def test_the_shortcut_model_is_caught_looking_at_the_corner(trained):
    samples, result = explain_shapes(
        image_model(trained["shortcut"].weights_path), f"builtin:shapes-shortcut?split=val&n={SAMPLES}"
    )
    patch = np.zeros(samples.x.shape[1:3], bool)
    patch[:PATCH_SIZE, :PATCH_SIZE] = True
    first = []
    for row in result.explanations:
        top_segment = top_segment_mask(result, row)
        first.append((top_segment & patch).sum() >= patch.sum() / 2)
    assert np.mean(first) >= 0.8, np.mean(first)


def test_attribution_order_beats_a_random_order(trained, monkeypatch):
    predict = image_model(trained["honest"].weights_path)
    _, ours = explain_shapes(predict, "builtin:shapes?split=val&n=12")
    rng = np.random.default_rng(0)
    original = lime.deletion_insertion_masks
    monkeypatch.setattr(lime.explain, "deletion_insertion_masks", lambda order: original(rng.permuted(order, axis=1)))
    _, shuffled = explain_shapes(predict, "builtin:shapes?split=val&n=12")
    mean = lambda rows, key: np.mean([row[key] for row in rows])  # noqa: E731
    assert mean(ours.explanations, "deletion_auc") < mean(shuffled.explanations, "deletion_auc")
    assert mean(ours.explanations, "insertion_auc") > mean(shuffled.explanations, "insertion_auc")


def test_the_planted_features_come_first(tabular_trained):
    module = planted_mlp()
    module.load_state_dict(load_file(tabular_trained["tabular-planted"].weights_path))
    predict = onnx_predict(module, tuple(TABULAR_DEMO_INPUT["tabular-planted"]["shape"]))
    train = load_samples("builtin:tabular-planted?split=train&n=1000", Path("."), 0)
    rows = load_samples("builtin:tabular-planted?split=val&n=50", Path("."), 0)
    result = lime.TabularLime(predict, train.x, train.feature_names).attribute(
        rows.x, num_samples=2000, top_k=2, stability_seeds=1, heldout_samples=0
    )
    top_two = [set(row["top_features"][:2]) for row in result.explanations]
    assert np.mean([top == set(PLANTED_FEATURES) for top in top_two]) >= 0.9
