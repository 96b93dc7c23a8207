"""``builtin:concepts?n=...&size=...&seed=...``: synthetic scenes with pixel-level ``color``, ``object`` and
``texture`` concepts and an image-level ``scene``, written as a Broden folder (see ``write_builtin_concepts`` for
how concepts are sized). ``cache`` keeps the folders written for ``builtin:concepts`` URIs.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from interp_ops.builtin_uri import BuiltinFamily, whole_number
from interp_ops.concepts.broden import META_COLUMNS
from interp_ops.concepts.concept_set import ConceptDataError
from interp_ops.palette import rgb

BUILTIN_PREFIX = "builtin:concepts"
DEFAULT_N, DEFAULT_SIZE = 500, 64
MAX_N, SIZE_RANGE = 100_000, (16, 512)
COLORS = ("red", "green", "blue", "yellow", "cyan", "magenta", "orange", "purple")  # named in interp_ops.palette
OBJECTS = ("circle", "square", "diamond", "triangle", "star", "cross")
SYNTHETIC_TEXTURES = (
    "stripes-horizontal-fine",
    "stripes-horizontal-wide",
    "stripes-vertical-fine",
    "stripes-vertical-wide",
    "dots",
    "checker",
    "grid",
)
PHOTO_TEXTURES = ("brick", "grass", "gravel")  # photographs that ship with scikit-image
TEXTURES = SYNTHETIC_TEXTURES + PHOTO_TEXTURES
SCENES = {"indoor": SYNTHETIC_TEXTURES, "outdoor": PHOTO_TEXTURES}  # a scene follows from the texture drawn
BUILTIN_CATEGORIES = {"color": COLORS, "object": OBJECTS, "texture": TEXTURES, "scene": tuple(SCENES)}
# Sizes as fractions of the image side. Each concept should cover about 1-3% of all pixels of the data set:
# IoU <= min(A, G) / max(A, G), and the activated area A is about `quantile` (0.5%) of all pixels, so much
# larger concepts could never score well, and much smaller ones neither.
OBJECT_SIDE = (0.22, 0.34)  # sqrt(object area) / image side; 1 object, a second one half of the time
TEXTURE_SIDE = (0.35, 0.6)  # the textured rectangle's height and width / image side
OBJECT_BRIGHTNESS = (0.85, 1.0)
PLACEMENT_TRIES = 50

_URI = BuiltinFamily(
    word="concepts",
    error=ConceptDataError,
    names={
        "concepts": {
            "n": (whole_number(1, MAX_N), str(DEFAULT_N)),
            "size": (whole_number(*SIZE_RANGE), str(DEFAULT_SIZE)),
            "seed": (whole_number(0, 2**32 - 1), None),
        }
    },
    unknown_name=f"unknown builtin {{uri!r}}; the concept builtin is {BUILTIN_PREFIX}",
    malformed_query=f"malformed query in {{uri!r}}; write {BUILTIN_PREFIX}?n=500&size=64",
    unknown_key="unknown parameter {key!r} in {uri!r}; allowed: {keys}",
)


def parse_builtin_uri(uri: str, seed: int) -> tuple[int, int, int]:
    """(n, size, seed) of ``builtin:concepts?n=&size=&seed=``; the seed defaults to ``seed``."""
    _, values = _URI.parse(uri, defaults={"seed": str(seed)})
    return values["n"], values["size"], values["seed"]


@lru_cache(maxsize=8)
def _photo(name: str, size: int) -> np.ndarray:
    """A scikit-image texture photo in [0, 1], scaled so that the photo spans two image sides."""
    import skimage.data
    from skimage.transform import rescale

    photo = getattr(skimage.data, name)().astype(np.float32)
    photo = rescale(photo, 2 * size / max(photo.shape), anti_aliasing=True)
    return ((photo - photo.min()) / np.ptp(photo)).astype(np.float32)


def _texture(name: str, height: int, width: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Pattern in [0, 1] of shape (height, width); periods scale with the image side (4 and 8 px at 64)."""
    fine = max(4, round(size / 16))
    wide = 2 * fine
    rows, cols = np.mgrid[0:height, 0:width]
    rows = rows + rng.integers(wide)
    cols = cols + rng.integers(wide)
    if name.startswith("stripes"):
        period = fine if name.endswith("fine") else wide
        coordinate = rows if "horizontal" in name else cols
        return ((coordinate // (period // 2)) % 2).astype(np.float32)
    if name == "dots":
        dy, dx = rows % wide - (wide - 1) / 2, cols % wide - (wide - 1) / 2
        return (dy**2 + dx**2 <= (0.3 * wide) ** 2).astype(np.float32)
    if name == "checker":
        return (((rows // (wide // 2)) + (cols // (wide // 2))) % 2).astype(np.float32)
    if name == "grid":
        line = max(1, size // 64)
        return ((rows % wide < line) | (cols % wide < line)).astype(np.float32)
    photo = _photo(name, size)
    top = rng.integers(0, photo.shape[0] - height + 1)
    left = rng.integers(0, photo.shape[1] - width + 1)
    return photo[top : top + height, left : left + width]


def _polygon(name: str, side: float, angle: float) -> np.ndarray | None:
    """Vertices (rows, cols) around the origin with area side**2, or None for a circle."""
    if name == "circle":
        return None
    if name in ("square", "diamond", "triangle"):
        corners = 3 if name == "triangle" else 4
        theta = angle + np.arange(corners) * 2 * np.pi / corners + (np.pi / 4 if name == "square" else 0.0)
        radius = np.ones(corners)
    elif name == "star":
        theta = angle + np.arange(10) * np.pi / 5
        radius = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    else:  # cross: a plus sign with arms a third of its width
        a, b = 1 / 6, 1 / 2
        xs = np.array([a, a, b, b, a, a, -a, -a, -b, -b, -a, -a])
        ys = np.array([b, a, a, -a, -a, -b, -b, -a, -a, a, a, b])
        theta = np.arctan2(ys, xs) + angle
        radius = np.hypot(xs, ys)
    vertices = np.stack([radius * np.sin(theta), radius * np.cos(theta)], axis=1)
    x, y = vertices[:, 1], vertices[:, 0]
    area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
    return vertices * (side / np.sqrt(area))


def _draw_object(name: str, side: float, center: np.ndarray, angle: float, shape: tuple[int, int]):
    from skimage.draw import disk, polygon

    vertices = _polygon(name, side, angle)
    if vertices is None:
        return disk(tuple(center), side / np.sqrt(np.pi), shape=shape)
    return polygon(vertices[:, 0] + center[0], vertices[:, 1] + center[1], shape=shape)


def _scene(size: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray], str]:
    """One image (size, size, 3) float32, its masks (category -> label codes, 0 = none) and its scene name."""
    from scipy.ndimage import gaussian_filter

    noise = gaussian_filter(rng.standard_normal((size, size)), sigma=size / 16)
    noise = (noise - noise.min()) / (np.ptp(noise) + 1e-12)
    gray = rng.uniform(0.3, 0.4) + rng.uniform(0.05, 0.15) * noise
    image = (gray[..., None] * (1.0 + rng.uniform(-0.1, 0.1, size=3))).astype(np.float32)
    masks = {name: np.zeros((size, size), dtype=np.uint8) for name in ("color", "object", "texture")}

    texture = int(rng.integers(len(TEXTURES)))
    height, width = (rng.uniform(*TEXTURE_SIDE, size=2) * size).astype(int)
    top, left = rng.integers(0, size - height + 1), rng.integers(0, size - width + 1)
    pattern = _texture(TEXTURES[texture], height, width, size, rng)
    dark, light = rng.uniform(0.05, 0.2), rng.uniform(0.75, 0.95)
    tint = 1.0 + rng.uniform(-0.1, 0.1, size=3)
    patch = (dark + (light - dark) * pattern)[..., None] * tint
    image[top : top + height, left : left + width] = np.clip(patch, 0.0, 1.0)
    masks["texture"][top : top + height, left : left + width] = texture + 1

    taken: list[np.ndarray] = []
    palette = rgb(COLORS)
    for _ in range(1 + int(rng.random() < 0.5)):
        kind, color = int(rng.integers(len(OBJECTS))), int(rng.integers(len(COLORS)))
        side = rng.uniform(*OBJECT_SIDE) * size
        angle = (
            rng.uniform(-np.pi / 18, np.pi / 18)
            if OBJECTS[kind] in ("square", "diamond")
            else rng.uniform(0, 2 * np.pi)
        )
        half = 0.75 * side + 1  # covers every shape's extent at this area
        for _ in range(PLACEMENT_TRIES):
            center = rng.uniform(half, size - half, size=2)
            box = np.concatenate([center - half, center + half])
            if not any(box[0] < o[2] and o[0] < box[2] and box[1] < o[3] and o[1] < box[3] for o in taken):
                taken.append(box)
                rr, cc = _draw_object(OBJECTS[kind], side, center, angle, (size, size))
                image[rr, cc] = palette[color] * rng.uniform(*OBJECT_BRIGHTNESS)
                masks["object"][rr, cc] = kind + 1
                masks["color"][rr, cc] = color + 1
                masks["texture"][rr, cc] = 0  # covered: the texture is not visible there
                break
    scene = "outdoor" if TEXTURES[texture] in PHOTO_TEXTURES else "indoor"
    return image, masks, scene


def _write_png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path, compress_level=1)


def _write_table(path: Path, header: list[str], rows: list[list]) -> None:
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _write_folder(folder: Path, n: int, size: int, seed: int) -> None:
    images_dir = folder / "images"
    images_dir.mkdir(parents=True)
    first_number = {}
    number = 1
    for category, names in BUILTIN_CATEGORIES.items():
        first_number[category] = number
        number += len(names)
    frequency = {category: np.zeros(len(names) + 1) for category, names in BUILTIN_CATEGORIES.items()}
    coverage = {category: np.zeros(len(names) + 1) for category, names in BUILTIN_CATEGORIES.items()}
    touched = dict.fromkeys(BUILTIN_CATEGORIES, 0)
    index_rows = []
    for i in range(n):
        image, masks, scene = _scene(size, np.random.default_rng([seed, 17, i]))
        stem = f"{i:06d}"
        _write_png(images_dir / f"{stem}.png", np.round(image * 255).astype(np.uint8))
        cells = {}
        for category, codes in masks.items():
            counts = np.bincount(codes.ravel(), minlength=len(BUILTIN_CATEGORIES[category]) + 1)
            present = counts[1:] > 0
            frequency[category][1:] += present
            coverage[category] += counts / codes.size
            if not present.any():
                cells[category] = ""
                continue
            touched[category] += 1
            labels = np.where(codes > 0, codes.astype(np.int32) + first_number[category] - 1, 0)
            rgb = np.zeros((size, size, 3), dtype=np.uint8)
            rgb[..., 0], rgb[..., 1] = labels % 256, labels // 256
            _write_png(images_dir / f"{stem}_{category}.png", rgb)
            cells[category] = f"{stem}_{category}.png"
        scene_code = list(SCENES).index(scene) + 1
        frequency["scene"][scene_code] += 1
        coverage["scene"][scene_code] += 1
        touched["scene"] += 1
        cells["scene"] = str(first_number["scene"] + scene_code - 1)
        index_rows.append([f"{stem}.png", "train", size, size, size, size, *(cells[c] for c in BUILTIN_CATEGORIES)])
    _write_table(folder / "index.csv", [*META_COLUMNS, *BUILTIN_CATEGORIES], index_rows)
    label_rows, category_rows = [], []
    for category, names in BUILTIN_CATEGORIES.items():
        code_rows = []
        for code, name in enumerate(names, start=1):
            label = first_number[category] + code - 1
            freq, cover = int(frequency[category][code]), round(float(coverage[category][code]), 4)
            label_rows.append([label, name, f"{category}({code})", freq, cover, name])
            code_rows.append([code, label, name, freq, cover])
        _write_table(folder / f"c_{category}.csv", ["code", "number", "name", "frequency", "coverage"], code_rows)
        category_rows.append([category, 1, len(names), len(names), touched[category]])
    _write_table(folder / "label.csv", ["number", "name", "category", "frequency", "coverage", "syns"], label_rows)
    _write_table(folder / "category.csv", ["name", "first", "last", "count", "frequency"], category_rows)


def write_builtin_concepts(out_dir: Path, n: int = DEFAULT_N, size: int = DEFAULT_SIZE, seed: int = 0) -> Path:
    """Write ``n`` synthetic scenes of ``size`` x ``size`` pixels as a Broden folder at ``out_dir``; returns it.

    Each scene: a dim, smooth background (unlabeled); a textured rectangle of 35-60% of the side in each direction
    (``texture``: stripes horizontal/vertical at two periods, dots, checker, grid, or a crop of scikit-image's
    brick, grass or gravel photos), in light/dark gray; one solid-coloured object (a second one half of the time)
    of sqrt(area) 22-34% of the side (``object``: circle, square, diamond, triangle, star, cross; ``color``: red,
    green, blue, yellow, cyan, magenta, orange, purple), drawn over the texture. ``scene`` (image-level) is
    "outdoor" for photo textures and "indoor" otherwise. Masks have the image's size.

    Image ``i`` depends only on (seed, i): a larger ``n`` extends a smaller one. The folder appears atomically
    (written beside it, then renamed); if another process wrote it first, that copy is kept.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise ConceptDataError(f"concepts: {out_dir} exists already; give a new folder to write concepts into")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        _write_folder(partial / "data", n, size, seed)
        try:
            os.rename(partial / "data", out_dir)
        except OSError:
            if not (out_dir / "index.csv").is_file():  # not a concurrent writer of the same folder: a real failure
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out_dir
