"""Sample loading, the synthetic scenes' ground truth, and conversion to model input (its normalization
included, which activation maximization shares)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.color import rgb2gray
from skimage.measure import regionprops
from skimage.transform import resize

from interp_ops import builtin_data
from interp_ops.datasets import DataError, Samples, data_fingerprint, load_samples, to_model_input
from interp_ops.normalization import Normalization, NormalizationError


def _image_samples(x: np.ndarray) -> Samples:
    return Samples(ids=[f"s{i}" for i in range(len(x))], x=x, labels=None, masks=None, class_names=None)


def _shape_from_mask(region_mask: np.ndarray) -> str:
    """Area over the area of the circle around the centroid: 1 for circles, 2/pi for squares, 0.41 for triangles."""
    (region,) = regionprops(region_mask.astype(np.uint8))
    radius = np.sqrt(((region.coords - region.centroid) ** 2).sum(axis=1)).max() + 0.5
    fill = region.area / (np.pi * radius**2)
    return "circle" if fill > 0.8 else "square" if fill > 0.5 else "triangle"


# --- builtin scenes -----------------------------------------------------------------------------


def test_shapes_layout_and_defaults(tmp_path):
    samples = load_samples("builtin:shapes", tmp_path, seed=0)
    assert samples.kind == "image"
    assert samples.x.shape == (64, 64, 64, 3) and samples.x.dtype == np.float32
    assert 0.0 <= samples.x.min() and samples.x.max() <= 1.0
    assert samples.masks.shape == (64, 64, 64) and samples.masks.dtype == np.int32
    assert samples.labels.dtype == np.int64 and set(samples.labels) <= {0, 1, 2}
    assert samples.class_names == ["circle", "square", "triangle"]
    assert samples.ids[12] == "shapes-val-00012"


def test_shapes_are_deterministic_per_seed_and_split(tmp_path):
    first = load_samples("builtin:shapes?split=train&n=16", tmp_path, seed=0)
    again = load_samples("builtin:shapes?split=train&n=16", tmp_path, seed=0)
    val = load_samples("builtin:shapes?split=val&n=16", tmp_path, seed=0)
    other_seed = load_samples("builtin:shapes?split=train&n=16", tmp_path, seed=1)
    prefix = load_samples("builtin:shapes?split=train&n=8", tmp_path, seed=0)
    np.testing.assert_array_equal(first.x, again.x)
    np.testing.assert_array_equal(first.masks, again.masks)
    np.testing.assert_array_equal(first.labels, again.labels)
    assert not np.array_equal(first.x, val.x)
    assert not np.array_equal(first.x, other_seed.x)
    np.testing.assert_array_equal(prefix.x, first.x[:8])


def test_masks_agree_with_labels(tmp_path):
    samples = load_samples("builtin:shapes?split=val&n=60", tmp_path, seed=3)
    assert np.bincount(samples.labels, minlength=3).min() >= 10, "every class should occur"
    object_counts = []
    for image, mask, label in zip(samples.x, samples.masks, samples.labels):
        objects = np.unique(mask[mask > 0])
        np.testing.assert_array_equal(objects, np.arange(1, len(objects) + 1))  # numbered 1..k, none hidden
        object_counts.append(len(objects))
        for index in objects:
            assert len(np.unique(image[mask == index], axis=0)) == 1, "objects are painted in one solid color"
        largest = objects[np.argmax([(mask == index).sum() for index in objects])]
        assert _shape_from_mask(mask == largest) == samples.class_names[label]
        assert (mask == largest).sum() >= 300, "the labelled object is large enough to learn its shape"
    assert set(object_counts) == {1, 2, 3}


def test_shortcut_patch_encodes_label_and_patch_false_removes_only_it(tmp_path):
    patched = load_samples("builtin:shapes-shortcut?split=train&n=32", tmp_path, seed=0)
    clean = load_samples("builtin:shapes-shortcut?split=train&n=32&patch=false", tmp_path, seed=0)
    plain = load_samples("builtin:shapes?split=train&n=32", tmp_path, seed=0)
    size = builtin_data.PATCH_SIZE
    corner = patched.x[:, :size, :size]
    label_colors = builtin_data.PATCH_COLORS[patched.labels][:, None, None]
    np.testing.assert_array_equal(corner, np.broadcast_to(label_colors, corner.shape))
    assert len({tuple(color) for color in builtin_data.PATCH_COLORS}) == 3
    assert not np.array_equal(clean.x[:, :size, :size], corner)
    outside = np.ones((64, 64), dtype=bool)
    outside[:size, :size] = False
    np.testing.assert_array_equal(patched.x[:, outside], clean.x[:, outside])
    np.testing.assert_array_equal(clean.x, plain.x)
    np.testing.assert_array_equal(patched.labels, clean.labels)
    np.testing.assert_array_equal(patched.masks, clean.masks)
    assert not patched.masks[:, :size, :size].any(), "the patch is not an object"
    assert patched.ids[0] == "shapes-shortcut-train-00000"


# --- tabular builtins ---------------------------------------------------------------------------


def _column(samples: Samples, name: str) -> np.ndarray:
    return samples.x[:, samples.feature_names.index(name)]


def test_tabular_planted_layout_and_defaults(tmp_path):
    samples = load_samples("builtin:tabular-planted", tmp_path, seed=0)
    assert samples.kind == "tabular" and samples.masks is None
    assert samples.x.shape == (200, 8) and samples.x.dtype == np.float32
    assert samples.labels.dtype == np.int64 and set(samples.labels) == {0, 1}
    assert samples.class_names == ["negative", "positive"]
    assert samples.feature_names == builtin_data.TABULAR_FEATURE_NAMES
    assert len(samples.feature_names) == samples.x.shape[1] == len(set(samples.feature_names))
    assert builtin_data.PLANTED_FEATURES == ("income", "debt_ratio")
    assert samples.ids[7] == "tabular-planted-val-00007"
    train = load_samples("builtin:tabular-planted?split=train&n=3000", tmp_path, seed=0)
    assert np.abs(train.x.mean(axis=0)).max() < 0.1, "standardized: mean about 0"
    assert np.abs(train.x.std(axis=0) - 1).max() < 0.1, "standardized: std about 1"
    assert 0.4 < train.labels.mean() < 0.6, "the classes are balanced"


def test_tabular_planted_is_deterministic_per_seed_and_split(tmp_path):
    first = load_samples("builtin:tabular-planted?split=train&n=50", tmp_path, seed=0)
    again = load_samples("builtin:tabular-planted?split=train&n=50", tmp_path, seed=0)
    val = load_samples("builtin:tabular-planted?split=val&n=50", tmp_path, seed=0)
    other_seed = load_samples("builtin:tabular-planted?split=train&n=50", tmp_path, seed=1)
    prefix = load_samples("builtin:tabular-planted?split=train&n=20", tmp_path, seed=0)
    np.testing.assert_array_equal(first.x, again.x)
    np.testing.assert_array_equal(first.labels, again.labels)
    assert not np.isclose(first.x, val.x).any(), "the splits share no value"
    assert not np.isclose(first.x, other_seed.x).any(), "the seeds share no value"
    np.testing.assert_array_equal(prefix.x, first.x[:20])
    np.testing.assert_array_equal(prefix.labels, first.labels[:20])
    assert data_fingerprint("builtin:tabular-planted", tmp_path) == data_fingerprint(
        "builtin:tabular-planted?split=val&n=200", tmp_path
    )
    assert data_fingerprint("builtin:tabular-planted", tmp_path) != data_fingerprint("builtin:shapes", tmp_path)


def test_tabular_planted_label_depends_only_on_the_planted_features(tmp_path):
    samples = load_samples("builtin:tabular-planted?split=train&n=2000", tmp_path, seed=4)
    income, debt = (_column(samples, name) for name in builtin_data.PLANTED_FEATURES)
    np.testing.assert_array_equal(samples.labels, (income > debt).astype(np.int64))
    np.testing.assert_array_equal(samples.labels, builtin_data.planted_label(samples.x))
    rng = np.random.default_rng(0)
    noise_columns = [j for j, name in enumerate(samples.feature_names) if name not in builtin_data.PLANTED_FEATURES]
    assert len(noise_columns) == 6
    shuffled = samples.x.copy()
    for j in noise_columns:
        shuffled[:, j] = rng.permutation(shuffled[:, j])
    np.testing.assert_array_equal(builtin_data.planted_label(shuffled), samples.labels)
    for name in builtin_data.PLANTED_FEATURES:
        j = samples.feature_names.index(name)
        one_shuffled = samples.x.copy()
        one_shuffled[:, j] = rng.permutation(one_shuffled[:, j])
        assert (builtin_data.planted_label(one_shuffled) != samples.labels).mean() > 0.2, name
    correlation = np.corrcoef(np.column_stack([samples.x, samples.labels]), rowvar=False)
    assert np.abs(correlation[noise_columns, -1]).max() < 0.1, "the noise features tell nothing about the label"
    off_diagonal = correlation[:8, :8] - np.eye(8)
    assert np.abs(off_diagonal).max() < 0.1, "the features are independent"
    planted = [samples.feature_names.index(name) for name in builtin_data.PLANTED_FEATURES]
    assert np.abs(correlation[planted, -1]).min() > 0.4


def test_breast_cancer_layout_split_and_labels(tmp_path):
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    val = load_samples("builtin:breast_cancer", tmp_path, seed=0)
    train = load_samples("builtin:breast_cancer?split=train", tmp_path, seed=0)
    assert val.kind == train.kind == "tabular" and val.masks is None
    assert (len(train.x), len(val.x)) == (398, 171), "70/30 of 569 rows"
    assert val.x.dtype == np.float32 and val.x.shape[1] == 30
    assert val.feature_names == train.feature_names == list(bunch.feature_names)
    assert len(val.feature_names) == val.x.shape[1]
    assert val.class_names == ["malignant", "benign"] == list(bunch.target_names)
    assert val.ids[3] == "breast_cancer-val-00003"
    train_rows, val_rows = builtin_data.breast_cancer_rows("train"), builtin_data.breast_cancer_rows("val")
    assert not set(train_rows) & set(val_rows)
    assert sorted([*train_rows, *val_rows]) == list(range(569))
    np.testing.assert_array_equal(train.labels, bunch.target[train_rows])
    np.testing.assert_array_equal(val.labels, bunch.target[val_rows])
    assert abs(train.labels.mean() - val.labels.mean()) < 0.01, "stratified by class"
    assert val_rows.tolist() != sorted(val_rows.tolist()), "shuffled, so a prefix is a random sample"


def test_breast_cancer_is_standardized_with_train_statistics(tmp_path):
    from sklearn.datasets import load_breast_cancer

    raw = load_breast_cancer().data
    train = load_samples("builtin:breast_cancer?split=train", tmp_path, seed=0)
    val = load_samples("builtin:breast_cancer?split=val", tmp_path, seed=0)
    np.testing.assert_allclose(train.x.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(train.x.std(axis=0), 1.0, atol=1e-5)
    assert np.abs(val.x.mean(axis=0)).max() > 0.05, "val keeps its own offsets: not standardized on itself"
    assert np.abs(val.x.std(axis=0) - 1).max() > 0.05
    train_raw = raw[builtin_data.breast_cancer_rows("train")]
    expected = (raw[builtin_data.breast_cancer_rows("val")] - train_raw.mean(axis=0)) / train_raw.std(axis=0)
    np.testing.assert_allclose(val.x, expected, rtol=1e-5, atol=1e-5)
    small = load_samples("builtin:breast_cancer?split=train&n=10", tmp_path, seed=0)
    np.testing.assert_array_equal(small.x, train.x[:10])  # statistics of the whole train split, whatever n


def test_breast_cancer_split_ignores_the_seed_and_n_defaults_to_all(tmp_path):
    first = load_samples("builtin:breast_cancer?split=train", tmp_path, seed=0)
    other_seed = load_samples("builtin:breast_cancer?split=train", tmp_path, seed=7)
    np.testing.assert_array_equal(first.x, other_seed.x)
    np.testing.assert_array_equal(first.labels, other_seed.labels)
    everything = load_samples("builtin:breast_cancer?n=171", tmp_path, seed=0)
    assert len(everything.x) == 171
    assert data_fingerprint("builtin:breast_cancer", tmp_path) == data_fingerprint(
        "builtin:breast_cancer?split=val&n=171", tmp_path
    )
    assert data_fingerprint("builtin:breast_cancer", tmp_path) != data_fingerprint(
        "builtin:breast_cancer?split=train", tmp_path
    )
    with pytest.raises(DataError, match=r"has 171 rows, but n=500"):
        data_fingerprint("builtin:breast_cancer?n=500", tmp_path)


def test_tabular_builtins_feed_tabular_models(tmp_path):
    for uri, features in [("builtin:tabular-planted?n=5", 8), ("builtin:breast_cancer?n=5", 30)]:
        samples = load_samples(uri, tmp_path, seed=0)
        np.testing.assert_array_equal(to_model_input(samples, (features,)), samples.x)
        with pytest.raises(DataError, match=f"data have {features} features but the model takes 3"):
            to_model_input(samples, (3,))


def test_feature_names_are_optional_and_checked():
    table = np.zeros((2, 3), np.float32)
    assert Samples(ids=list("ab"), x=table, labels=None, masks=None, class_names=None).feature_names is None
    named = Samples(ids=list("ab"), x=table, labels=None, masks=None, class_names=None, feature_names=list("uvw"))
    assert named.feature_names == ["u", "v", "w"]
    with pytest.raises(DataError, match=r"2 feature names for samples of shape \(2, 3\)"):
        Samples(ids=list("ab"), x=table, labels=None, masks=None, class_names=None, feature_names=["u", "v"])
    with pytest.raises(DataError, match=r"one name per column of tabular"):
        Samples(
            ids=list("ab"),
            x=np.zeros((2, 4, 4, 3), np.float32),
            labels=None,
            masks=None,
            class_names=None,
            feature_names=["r", "g", "b"],
        )


# --- to_model_input -----------------------------------------------------------------------------


def test_rgb_to_small_grayscale_matches_skimage(tmp_path):
    samples = load_samples("builtin:shapes?n=4", tmp_path, seed=0)
    x = to_model_input(samples, (1, 28, 28))
    assert x.shape == (4, 1, 28, 28) and x.dtype == np.float32
    for converted, image in zip(x, samples.x):
        expected = rgb2gray(resize(image, (28, 28), order=1, anti_aliasing=True))
        np.testing.assert_allclose(converted[0], expected, atol=1e-5)


def test_batch_resize_matches_per_image_resize(tmp_path):
    samples = load_samples("builtin:shapes?n=3", tmp_path, seed=0)
    x = to_model_input(samples, (3, 40, 48))
    for converted, image in zip(x, samples.x):
        expected = resize(image, (40, 48), order=1, anti_aliasing=True)
        np.testing.assert_allclose(converted, expected.transpose(2, 0, 1), atol=1e-6)


def test_gray_is_repeated_to_rgb():
    gray = np.random.default_rng(0).random((2, 8, 8, 1), dtype=np.float32)
    x = to_model_input(_image_samples(gray), (3, 8, 8))
    assert x.shape == (2, 3, 8, 8)
    for channel in range(3):
        np.testing.assert_array_equal(x[:, channel], gray[..., 0])


def test_range_then_normalization_arithmetic():
    rgb = np.random.default_rng(0).random((2, 8, 8, 3), dtype=np.float32)
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 2.0]
    x = to_model_input(_image_samples(rgb), (3, 8, 8), value_range=(-1.0, 1.0), mean=mean, std=std)
    expected = ((rgb * 2.0 - 1.0) - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(x, expected.transpose(0, 3, 1, 2), rtol=1e-5, atol=1e-6)
    unscaled = to_model_input(_image_samples(rgb), (3, 8, 8), value_range=(0.0, 255.0))
    np.testing.assert_allclose(unscaled, rgb.transpose(0, 3, 1, 2) * 255.0, rtol=1e-6)


def test_tabular_passes_through_and_normalizes():
    table = np.arange(12, dtype=np.float32).reshape(4, 3)
    samples = Samples(ids=list("abcd"), x=table, labels=None, masks=None, class_names=None)
    assert samples.kind == "tabular"
    np.testing.assert_array_equal(to_model_input(samples, (3,)), table)
    normalized = to_model_input(samples, (3,), mean=[1.0, 2.0, 3.0], std=[2.0] * 3)
    np.testing.assert_allclose(normalized, (table - [1, 2, 3]) / 2)


def test_shape_mismatches_are_data_errors():
    table = Samples(ids=list("ab"), x=np.zeros((2, 5), np.float32), labels=None, masks=None, class_names=None)
    images = _image_samples(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(DataError, match=r"5 features but the model takes 4"):
        to_model_input(table, (4,))
    with pytest.raises(DataError, match=r"data are tabular .* model takes images \[3, 8, 8\]"):
        to_model_input(table, (3, 8, 8))
    with pytest.raises(DataError, match=r"data are images .* model takes \[12\]"):
        to_model_input(images, (12,))
    with pytest.raises(DataError, match=r"input.mean: 2 values for 3 channels; give 1 or 3"):
        to_model_input(images, (3, 8, 8), mean=[0.5, 0.5])
    with pytest.raises(DataError, match=r"input.std: \[1.0, 0.0, 1.0\] must all be > 0"):
        to_model_input(images, (3, 8, 8), std=[1.0, 0.0, 1.0])
    with pytest.raises(DataError, match=r"input.value_range: \(1.0, 0.0\) must be .* low < high"):
        to_model_input(images, (3, 8, 8), value_range=(1.0, 0.0))


# --- normalization (shared with activation maximization) ----------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_normalization_is_one_arithmetic_for_numpy_and_torch(channels):
    """The same three float32 steps on a channel-last array and a channel-first tensor, bit for bit, and not the
    fused multiply-add, which rounds once instead of three times."""
    rng = np.random.default_rng(channels)
    images = rng.random((4, 9, 7, channels), dtype=np.float32)
    mean, std = [0.1, 0.2, 0.3][:channels], [0.3, 0.7, 0.9][:channels]
    normalization = Normalization.checked(channels, (-1.0, 2.0), mean, std)
    by_numpy = normalization.apply(images)
    by_torch = normalization.apply(torch.from_numpy(images.transpose(0, 3, 1, 2)), channel_axis=1)
    three_steps = ((images * np.float32(3.0) + np.float32(-1.0)) - np.float32(mean)) / np.float32(std)
    assert by_numpy.dtype == np.float32 and by_torch.dtype == torch.float32
    np.testing.assert_array_equal(by_numpy, three_steps)
    np.testing.assert_array_equal(by_torch.numpy().transpose(0, 2, 3, 1), by_numpy)
    fused = (np.float32(3.0) / np.float32(std)) * images + (np.float32(-1.0) - np.float32(mean)) / np.float32(std)
    assert not np.array_equal(fused, by_numpy)
    np.testing.assert_allclose(normalization.invert(by_numpy), images, atol=1e-6)


def test_normalization_skips_what_is_not_given():
    table = np.array([[-0.0, 1.5], [2.0, -3.0]], dtype=np.float32)
    assert Normalization.checked(2, None).apply(table).tobytes() == table.tobytes()  # -0.0 stays -0.0
    np.testing.assert_array_equal(Normalization.checked(2, None, mean=[1.0]).apply(table), table - 1.0)
    np.testing.assert_array_equal(
        Normalization.checked(2, (0.0, 10.0), std=[2.0, 4.0]).apply(table), table * 10 / [2, 4]
    )


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(value_range=(1.0, 1.0)), r"value_range: \(1.0, 1.0\) must be two finite numbers \(low, high\)"),
        (dict(value_range=(0.0, float("inf"))), r"value_range: .* finite"),
        (dict(value_range=(0.0, 0.5, 1.0)), r"value_range: .* two finite numbers"),
        (dict(mean=[0.5, 0.5]), r"mean: 2 values for 3 channels; give 1 or 3"),
        (dict(mean=[float("nan")]), r"mean: \[nan\] must be finite numbers"),
        (dict(std=[0.5, -0.5, 0.5]), r"std: \[0.5, -0.5, 0.5\] must all be > 0; give positive standard deviations"),
    ],
)
def test_normalization_refuses_what_cannot_normalize(arguments, message):
    with pytest.raises(NormalizationError, match=message):
        Normalization.checked(3, **arguments)


def test_normalization_refuses_inputs_with_other_channels():
    normalization = Normalization.checked(3, mean=[0.5])
    with pytest.raises(NormalizationError, match=r"input has 1 channels on axis 1 .* made for 3"):
        normalization.apply(torch.zeros(2, 1, 4, 4), channel_axis=1)


# --- image directories and numpy files ----------------------------------------------------------


def test_image_directory(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (10, 12), dtype=np.uint8)
    rgba = rng.integers(0, 256, (10, 12, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    Image.fromarray(rgb).save(tmp_path / "b.png")
    Image.fromarray(gray).save(tmp_path / "a.png")
    Image.fromarray(rgba).save(tmp_path / "c.PNG")
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "d.jpg")
    (tmp_path / "nested").mkdir()
    smooth = np.stack([*np.meshgrid(np.linspace(0, 255, 12), np.linspace(0, 255, 10)), np.full((10, 12), 90.0)], -1)
    Image.fromarray(smooth.astype(np.uint8)).save(tmp_path / "nested" / "e.jpeg", quality=95)
    (tmp_path / "notes.txt").write_text("not an image")

    samples = load_samples(".", tmp_path, seed=0)
    assert samples.ids == ["a.png", "b.png", "c.PNG", "d.jpg", "nested/e.jpeg"]
    assert samples.x.shape == (5, 10, 12, 3), "resized to the most common size, gray promoted to RGB"
    assert samples.labels is None and samples.masks is None and samples.kind == "image"
    np.testing.assert_allclose(samples.x[0], np.repeat(gray[..., None], 3, axis=-1) / 255.0, atol=1e-6)
    np.testing.assert_allclose(samples.x[1], rgb / 255.0, atol=1e-6)
    np.testing.assert_allclose(samples.x[2], rgba[..., :3] / 255.0, atol=1e-6)
    assert np.abs(samples.x[4] - smooth.astype(np.uint8) / 255.0).mean() < 0.02, "JPEG is lossy, but close"


def test_grayscale_directory_stays_single_channel(tmp_path):
    Image.fromarray(np.full((6, 6), 128, np.uint8)).save(tmp_path / "x.png")
    samples = load_samples(str(tmp_path), Path("/nonexistent-base"), seed=0)
    assert samples.x.shape == (1, 6, 6, 1)
    np.testing.assert_allclose(samples.x, 128 / 255.0)


def test_npy_channel_first_last_and_uint8(tmp_path):
    rng = np.random.default_rng(0)
    last = rng.random((4, 9, 7, 3), dtype=np.float32)
    np.save(tmp_path / "last.npy", last)
    np.save(tmp_path / "first.npy", last.transpose(0, 3, 1, 2))
    np.save(tmp_path / "gray.npy", (last[..., 0] * 255).astype(np.uint8))
    np.testing.assert_array_equal(load_samples("last.npy", tmp_path, 0).x, last)
    first = load_samples("first.npy", tmp_path, 0)
    np.testing.assert_array_equal(first.x, last)
    assert first.ids == ["row-00000", "row-00001", "row-00002", "row-00003"]
    gray = load_samples("gray.npy", tmp_path, 0).x
    assert gray.shape == (4, 9, 7, 1) and gray.dtype == np.float32
    np.testing.assert_allclose(gray[..., 0], (last[..., 0] * 255).astype(np.uint8) / 255.0)


def test_npz_with_labels_and_tabular(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (3, 1, 5, 5), dtype=np.uint8)
    np.savez(tmp_path / "images.npz", images=images, y=np.array([2.0, 0.0, 1.0]))
    samples = load_samples("images.npz", tmp_path, 0)
    assert samples.x.shape == (3, 5, 5, 1)
    assert samples.labels.dtype == np.int64 and samples.labels.tolist() == [2, 0, 1]

    np.savez(tmp_path / "table.npz", x=np.arange(10.0).reshape(5, 2), labels=np.arange(5))
    table = load_samples("table.npz", tmp_path, 0)
    assert table.kind == "tabular" and table.x.dtype == np.float32 and table.x.shape == (5, 2)
    assert table.labels.tolist() == [0, 1, 2, 3, 4]


# --- fingerprints -------------------------------------------------------------------------------


def test_fingerprints_follow_content(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(data / "a.png")
    before = data_fingerprint("data", tmp_path)
    assert re.fullmatch(r"[0-9a-f]{64}", before)
    shutil.copytree(data, tmp_path / "copy")
    assert data_fingerprint("copy", tmp_path) == before, "the location is not content"
    Image.fromarray(np.ones((4, 4), np.uint8)).save(data / "a.png")
    assert data_fingerprint("data", tmp_path) != before

    np.save(tmp_path / "x.npy", np.zeros((2, 3)))
    npy = data_fingerprint("x.npy", tmp_path)
    np.save(tmp_path / "x.npy", np.ones((2, 3)))
    assert data_fingerprint("x.npy", tmp_path) != npy

    assert data_fingerprint("builtin:shapes", tmp_path) == data_fingerprint("builtin:shapes?n=64&split=val", tmp_path)
    assert data_fingerprint("builtin:shapes", tmp_path) != data_fingerprint("builtin:shapes?n=65", tmp_path)
    assert data_fingerprint("builtin:shapes-shortcut", tmp_path) != data_fingerprint(
        "builtin:shapes-shortcut?patch=false", tmp_path
    )


# --- error messages -----------------------------------------------------------------------------


def test_missing_path_names_resolved_path_and_accepted_forms(tmp_path):
    with pytest.raises(DataError) as error:
        load_samples("x/y", tmp_path, seed=0)
    message = str(error.value)
    assert f"path 'x/y' does not exist (resolved to {tmp_path.resolve() / 'x' / 'y'})" in message
    assert "directory of PNG/JPEG images, a .npy/.npz file, or builtin:shapes" in message
    with pytest.raises(DataError, match="does not exist"):
        data_fingerprint("x/y", tmp_path)


@pytest.mark.parametrize(
    ("uri", "pattern"),
    [
        (
            "builtin:mnist",
            r"unknown builtin 'mnist'.*known builtins: breast_cancer, shapes, shapes-shortcut, "
            r"tabular-planted",
        ),
        ("builtin:shapes?size=3", r"unknown parameter 'size' for builtin:shapes; allowed: split, n"),
        ("builtin:shapes?patch=true", r"unknown parameter 'patch' for builtin:shapes"),
        ("builtin:shapes?n=abc", r"n='abc' must be a whole number from 1 to"),
        ("builtin:shapes?n=0", r"n='0' must be a whole number"),
        ("builtin:shapes?split=test", r"split='test' must be one of \['train', 'val'\]"),
        ("builtin:shapes-shortcut?patch=yes", r"patch='yes' must be true or false"),
        ("builtin:shapes?n", r"malformed query 'n'.*key=value"),
        ("builtin:shapes?n=3&n=4", r"parameter 'n' is given twice"),
        (
            "builtin:tabular-planted?patch=true",
            r"unknown parameter 'patch' for builtin:tabular-planted; allowed: "
            r"split, n",
        ),
        ("builtin:tabular-planted?n=0", r"n='0' must be a whole number"),
        ("builtin:tabular-planted?split=test", r"split='test' must be one of \['train', 'val'\]"),
        (
            "builtin:breast_cancer?n=172",
            r"builtin:breast_cancer split=val has 171 rows, but n=172 asks for more; "
            r"give n from 1 to 171",
        ),
        ("builtin:breast_cancer?split=train&n=399", r"split=train has 398 rows, but n=399"),
        ("builtin:breast_cancer?n=-1", r"n='-1' must be a whole number"),
        ("builtin:breast_cancer?n=", r"n='' must be a whole number"),
        ("builtin:breast_cancer?split=all", r"split='all' must be one of"),
        ("builtin:breast_cancer?seed=3", r"unknown parameter 'seed' for builtin:breast_cancer"),
    ],
)
def test_bad_builtin_uris(tmp_path, uri, pattern):
    with pytest.raises(DataError, match=pattern):
        load_samples(uri, tmp_path, seed=0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # imageio, while it tries plugins on the bad PNG
def test_bad_files_and_directories(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"holds no PNG/JPEG images; add \*.png"):
        load_samples("empty", tmp_path, seed=0)
    (tmp_path / "table.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match=r"neither .npy nor .npz"):
        load_samples("table.csv", tmp_path, seed=0)
    np.save(tmp_path / "big.npy", np.full((2, 4, 4, 3), 255.0, np.float32))
    with pytest.raises(DataError, match=r"image values in \[255, 255\], expected \[0, 1\]; scale them"):
        load_samples("big.npy", tmp_path, seed=0)
    np.save(tmp_path / "rgba.npy", np.zeros((2, 4, 5, 4), np.float32))
    with pytest.raises(DataError, match=r"shape \(2, 4, 5, 4\); images need 1 or 3 channels"):
        load_samples("rgba.npy", tmp_path, seed=0)
    np.savez(tmp_path / "keys.npz", features=np.zeros((2, 3)))
    with pytest.raises(DataError, match=r"has arrays \['features'\]; store the samples under 'x' or 'images'"):
        load_samples("keys.npz", tmp_path, seed=0)
    np.savez(tmp_path / "labels.npz", x=np.zeros((2, 3)), labels=np.zeros(3))
    with pytest.raises(DataError, match=r"labels'\] has shape \(3,\).*give 2 integer labels"):
        load_samples("labels.npz", tmp_path, seed=0)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot read image .*x.png.*replace or remove the file"):
        load_samples("broken", tmp_path, seed=0)
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"cannot read .*broken.npz"):
        load_samples("broken.npz", tmp_path, seed=0)


def test_to_display_inverts_to_model_input():
    from interp_ops.datasets import load_samples, to_display, to_model_input

    samples = load_samples("builtin:shapes?n=3", Path("."), 0)
    x = to_model_input(samples, (3, 64, 64), (-1.0, 1.0), [0.1, 0.2, 0.3], [0.5, 0.4, 0.3])
    back = to_display(x, (-1.0, 1.0), [0.1, 0.2, 0.3], [0.5, 0.4, 0.3])
    assert back.shape == samples.x.shape
    np.testing.assert_allclose(back, samples.x, atol=1e-5)
