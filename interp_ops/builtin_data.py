"""Synthetic scenes with known ground truth, so that audits can be checked without downloads.

Each scene holds one large object, whose shape is the label, and up to two small distractors, on a
textured background. Objects never overlap and keep clear of the top-left corner, so the corner patch
of ``shapes-shortcut`` hides nothing and every object is fully visible in the mask.

Two tabular builtins follow: ``tabular-planted``, whose label depends on two known features only, and
``breast_cancer``, scikit-learn's offline copy of the Wisconsin data with a fixed train/val split.
"""

from __future__ import annotations

import hashlib
from functools import cache

import numpy as np
import skimage.data
from scipy.ndimage import gaussian_filter
from skimage.draw import disk, polygon

from interp_ops.palette import rgb

SIZE = 64
CLASS_NAMES = ["circle", "square", "triangle"]
OBJECT_COLORS = ("red", "green", "blue", "yellow", "magenta", "cyan", "white")  # named in interp_ops.palette
# The shortcut: one color per class, painted in the top-left corner.
PATCH_SIZE = 6
PATCH_COLORS = rgb(("orange", "purple", "spring-green"))
# Objects keep out of this corner square so that the patch never covers one.
CORNER_KEEPOUT = PATCH_SIZE + 2
MAIN_OBJECT_SIZE = (20.0, 30.0)  # sqrt(area) in pixels
DISTRACTOR_SIZE = (8.0, 13.0)
SPLIT_CODES = {"train": 1, "val": 2}
PLACEMENT_TRIES = 50
TEXTURES = ("brick", "grass", "gravel")


@cache
def _texture(name: str) -> np.ndarray:
    """scikit-image ships these photographs, so they load offline."""
    image = getattr(skimage.data, name)().astype(np.float32)
    return (image - image.min()) / np.ptp(image)


def _background(rng: np.random.Generator) -> np.ndarray:
    """A dim, tinted texture: a photo crop, stripes or smooth noise."""
    kind = rng.integers(len(TEXTURES) + 2)
    if kind < len(TEXTURES):
        texture = _texture(TEXTURES[kind])
        top, left = rng.integers(0, texture.shape[0] - SIZE, size=2)
        pattern = texture[top : top + SIZE, left : left + SIZE]
    elif kind == len(TEXTURES):
        angle, period, phase = rng.uniform(0, np.pi), rng.uniform(5, 14), rng.uniform(0, 2 * np.pi)
        rows, cols = np.mgrid[0:SIZE, 0:SIZE]
        pattern = 0.5 + 0.5 * np.sin(2 * np.pi * (cols * np.cos(angle) + rows * np.sin(angle)) / period + phase)
    else:
        noise = gaussian_filter(rng.standard_normal((SIZE, SIZE)), sigma=rng.uniform(1.5, 4.0))
        pattern = (noise - noise.min()) / np.ptp(noise)
    gray = rng.uniform(0.1, 0.3) + rng.uniform(0.1, 0.3) * pattern
    tint = 1.0 + rng.uniform(-0.3, 0.3, size=3)
    return np.clip(gray[..., None] * tint, 0.0, 1.0).astype(np.float32)


def _outline(shape: int, size: float, angle: float) -> np.ndarray | float:
    """Vertices (rows, cols) around the origin for polygons, or the radius for a circle; all of area size**2."""
    if shape == 0:
        return size / np.sqrt(np.pi)
    corners, circumradius = (4, size / np.sqrt(2)) if shape == 1 else (3, size * np.sqrt(4 / np.sqrt(27)))
    theta = angle + np.arange(corners) * 2 * np.pi / corners
    return np.stack([circumradius * np.sin(theta), circumradius * np.cos(theta)], axis=1)


def _half_extent(outline: np.ndarray | float) -> np.ndarray:
    if isinstance(outline, float):
        return np.array([outline, outline])
    return np.abs(outline).max(axis=0)


def _place(rng: np.random.Generator, half: np.ndarray, taken: list[np.ndarray]) -> np.ndarray | None:
    """A center whose bounding box fits the image, misses the corner and every box in ``taken``."""
    for _ in range(PLACEMENT_TRIES):
        center = rng.uniform(half + 1, SIZE - 1 - half)
        box = np.concatenate([center - half - 1, center + half + 1])  # top, left, bottom, right
        in_corner = box[0] < CORNER_KEEPOUT and box[1] < CORNER_KEEPOUT
        overlaps = any(
            box[0] < other[2] and other[0] < box[2] and box[1] < other[3] and other[1] < box[3] for other in taken
        )
        if not in_corner and not overlaps:
            taken.append(box)
            return center
    return None


def _scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    image = _background(rng)
    mask = np.zeros((SIZE, SIZE), dtype=np.int32)
    shapes: list[int] = []
    taken: list[np.ndarray] = []
    palette = rgb(OBJECT_COLORS)
    for index in range(rng.integers(1, 4)):
        shape = int(rng.integers(len(CLASS_NAMES)))
        size = rng.uniform(*(MAIN_OBJECT_SIZE if index == 0 else DISTRACTOR_SIZE))
        outline = _outline(shape, size, rng.uniform(0, 2 * np.pi))
        center = _place(rng, _half_extent(outline), taken)
        if center is None:
            continue
        if isinstance(outline, float):
            rows, cols = disk(tuple(center), outline, shape=mask.shape)
        else:
            rows, cols = polygon(outline[:, 0] + center[0], outline[:, 1] + center[1], shape=mask.shape)
        shapes.append(shape)
        mask[rows, cols] = len(shapes)
        image[rows, cols] = palette[rng.integers(len(palette))] * rng.uniform(0.75, 1.0)
    areas = np.bincount(mask.ravel(), minlength=len(shapes) + 1)[1:]
    return image, mask, shapes[int(np.argmax(areas))]


def shapes(split: str, n: int, seed: int, patch: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` scenes as images (N, 64, 64, 3), masks (N, 64, 64) and labels (N,).

    Sample ``i`` depends only on (seed, split, i), so a larger ``n`` extends a smaller one and the
    patched and unpatched scenes are identical apart from the patch.
    """
    images = np.empty((n, SIZE, SIZE, 3), dtype=np.float32)
    masks = np.empty((n, SIZE, SIZE), dtype=np.int32)
    labels = np.empty(n, dtype=np.int64)
    for i in range(n):
        images[i], masks[i], labels[i] = _scene(np.random.default_rng([seed, SPLIT_CODES[split], i]))
    if patch:
        images[:, :PATCH_SIZE, :PATCH_SIZE] = PATCH_COLORS[labels][:, None, None, :]
    return images, masks, labels


# --- tabular builtins ---------------------------------------------------------------------------

# tabular-planted: eight standard-normal features, of which only two decide the label.
TABULAR_FEATURE_NAMES = [
    "age",
    "income",
    "account_tenure",
    "num_dependents",
    "debt_ratio",
    "region_code",
    "login_count",
    "browser_version",
]
# The planted rule: positive exactly when income exceeds debt_ratio. The two sit apart (columns 1 and 4)
# so that an attribution method cannot look right by favouring the first columns.
PLANTED_FEATURES = ("income", "debt_ratio")
TABULAR_CLASS_NAMES = ["negative", "positive"]
# Keeps the planted streams apart from the shapes streams of the same (seed, split, i).
_PLANTED_STREAM = 101


def planted_label(x: np.ndarray) -> np.ndarray:
    """The planted rule on rows (N, 8) laid out as TABULAR_FEATURE_NAMES: 1 iff income - debt_ratio > 0."""
    income, debt = (TABULAR_FEATURE_NAMES.index(name) for name in PLANTED_FEATURES)
    return (x[:, income] - x[:, debt] > 0).astype(np.int64)


def tabular_planted(split: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows (N, 8) float32 of independent standard-normal features and their labels (N,) int64.

    Row ``i`` depends only on (seed, split, i), so a larger ``n`` extends a smaller one. The label is
    ``planted_label``: the six features outside PLANTED_FEATURES are noise that the label ignores.
    """
    x = np.empty((n, len(TABULAR_FEATURE_NAMES)), dtype=np.float32)
    for i in range(n):
        rng = np.random.default_rng([seed, SPLIT_CODES[split], _PLANTED_STREAM, i])
        x[i] = rng.standard_normal(len(TABULAR_FEATURE_NAMES))
    return x, planted_label(x)


# breast_cancer: scikit-learn's copy of the Wisconsin diagnostic data (569 rows, 30 features).
# The split does not depend on the audit seed: a model trained on one seed's train split must never
# meet its training rows in another seed's val split.
BREAST_CANCER_VAL_FRACTION = 0.3
_BREAST_CANCER_SPLIT_SEED = 20240601


@cache
def _breast_cancer_raw() -> tuple[np.ndarray, np.ndarray, tuple[str, ...], tuple[str, ...]]:
    """Features (569, 30) float64, targets, feature names and class names as sklearn ships them (offline)."""
    from sklearn.datasets import load_breast_cancer  # imported here: sklearn takes a second to import

    bunch = load_breast_cancer()
    x, y = bunch.data.astype(np.float64), bunch.target.astype(np.int64)
    x.flags.writeable = y.flags.writeable = False
    return x, y, tuple(map(str, bunch.feature_names)), tuple(map(str, bunch.target_names))


@cache
def breast_cancer_rows(split: str) -> np.ndarray:
    """Indices into sklearn's rows that form ``split``, in the split's (shuffled) order.

    Stratified: in each class a fixed permutation (independent of any seed) puts round(30%) of the
    rows in val and the rest in train; the split is then shuffled so that every prefix is a random
    sample of it.
    """
    _, y, _, _ = _breast_cancer_raw()
    rng = np.random.default_rng(_BREAST_CANCER_SPLIT_SEED)
    val_parts, train_parts = [], []
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        cut = int(round(BREAST_CANCER_VAL_FRACTION * len(members)))
        val_parts.append(members[:cut])
        train_parts.append(members[cut:])
    splits = {"train": rng.permutation(np.concatenate(train_parts)), "val": rng.permutation(np.concatenate(val_parts))}
    rows = splits[split]
    rows.flags.writeable = False
    return rows


def breast_cancer_size(split: str) -> int:
    return len(breast_cancer_rows(split))


def breast_cancer_names() -> tuple[list[str], list[str]]:
    """Feature names (30) and class names (["malignant", "benign"]) as sklearn gives them."""
    _, _, features, classes = _breast_cancer_raw()
    return list(features), list(classes)


def breast_cancer(split: str, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` rows of ``split`` (all by default) as float32 (N, 30) and labels (N,) int64.

    Model-ready: every feature is standardized with the mean and (population) standard deviation of the
    whole TRAIN split, so train rows have mean 0 and std 1 and val rows are on the same scale, but not
    exactly 0/1. Labels follow sklearn: 0 = malignant, 1 = benign.
    """
    x, y, _, _ = _breast_cancer_raw()
    train = x[breast_cancer_rows("train")]
    mean, std = train.mean(axis=0), train.std(axis=0)
    rows = breast_cancer_rows(split)[:n]
    return ((x[rows] - mean) / std).astype(np.float32), y[rows].copy()


def breast_cancer_digest() -> bytes:
    """sha256 of the raw data that sklearn ships, so that caches notice a changed copy."""
    x, y, features, classes = _breast_cancer_raw()
    digest = hashlib.sha256(np.ascontiguousarray(x).tobytes() + np.ascontiguousarray(y).tobytes())
    digest.update("\0".join(features + classes).encode())
    return digest.digest()
