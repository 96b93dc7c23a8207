"""Sample loading from builtins, image directories and numpy files, and conversion to model input.

Every loader returns the same ``Samples`` layout (images channel-last in [0, 1]) so that the
conversion to what a particular model expects happens in one place: ``to_model_input``.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from skimage.color import gray2rgb, rgb2gray, rgba2rgb
from skimage.io import imread
from skimage.transform import resize
from skimage.util import img_as_float32

from interp_ops import builtin_data, palette
from interp_ops.builtin_uri import BuiltinFamily, InvalidParameter, whole_number

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
ARRAY_SUFFIXES = {".npy", ".npz"}
NPZ_IMAGE_KEYS = ("x", "images")
NPZ_LABEL_KEYS = ("labels", "y")
MAX_BUILTIN_SAMPLES = 100_000
DATA_FORMS = "give a directory of PNG/JPEG images, a .npy/.npz file, or builtin:shapes"


class DataError(ValueError):
    """Bad data input; message names the problem and the fix."""


@dataclass(frozen=True)
class Samples:
    """Images are float32 (N, H, W, C) in [0, 1] with C in {1, 3}; tabular data is float32 (N, D).

    ``feature_names`` names the D columns of tabular data where they are known (tabular builtins).
    """

    ids: list[str]
    x: np.ndarray
    labels: np.ndarray | None
    masks: np.ndarray | None
    class_names: list[str] | None
    feature_names: list[str] | None = None

    def __post_init__(self) -> None:
        n = len(self.x)
        if len(self.ids) != n:
            raise DataError(f"data: {len(self.ids)} ids for {n} samples; give one id per sample")
        if self.labels is not None and self.labels.shape != (n,):
            raise DataError(f"data: labels have shape {self.labels.shape}, expected ({n},); give one label per sample")
        if self.masks is not None and self.masks.shape != self.x.shape[:3]:
            raise DataError(
                f"data: masks have shape {self.masks.shape}, expected {self.x.shape[:3]}; give one mask per image"
            )
        if self.feature_names is not None and (self.x.ndim != 2 or len(self.feature_names) != self.x.shape[1]):
            raise DataError(
                f"data: {len(self.feature_names)} feature names for samples of shape {self.x.shape}; "
                "give one name per column of tabular (N, D) data"
            )

    @property
    def kind(self) -> str:
        return "image" if self.x.ndim == 4 else "tabular"


@dataclass(frozen=True)
class _BuiltinSpec:
    name: str
    split: str
    n: int  # resolved: a builtin whose default is "all rows" holds its split's size here
    patch: bool


def _parse_bool(key: str, value: str) -> bool:
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise InvalidParameter(f"parameter {key}={value!r} must be true or false")


def _parse_split(key: str, value: str) -> str:
    if value in builtin_data.SPLIT_CODES:
        return value
    raise InvalidParameter(f"parameter {key}={value!r} must be one of {sorted(builtin_data.SPLIT_CODES)}")


_parse_count = whole_number(1, MAX_BUILTIN_SAMPLES)

# name -> {parameter: (parser, default)}; a default of None means "every row of the split" (finite builtins).
BUILTINS = {
    "shapes": {"split": (_parse_split, "val"), "n": (_parse_count, "64")},
    "shapes-shortcut": {"split": (_parse_split, "val"), "n": (_parse_count, "64"), "patch": (_parse_bool, "true")},
    "tabular-planted": {"split": (_parse_split, "val"), "n": (_parse_count, "200")},
    "breast_cancer": {"split": (_parse_split, "val"), "n": (_parse_count, None)},
}
# Builtins with a fixed number of rows: name -> (split -> number of rows in it).
_FINITE_BUILTINS = {"breast_cancer": builtin_data.breast_cancer_size}


def _resolve_count(name: str, split: str, n: int | None) -> int:
    if name not in _FINITE_BUILTINS:
        return n
    size = _FINITE_BUILTINS[name](split)
    if n is None:
        return size
    if n > size:
        raise DataError(
            f"data: builtin:{name} split={split} has {size} rows, but n={n} asks for more; give n from 1 to {size}"
        )
    return n


_URI = BuiltinFamily(
    word="data",
    error=DataError,
    names=BUILTINS,
    unknown_name="unknown builtin {name!r} in {uri!r}; known builtins: {known}",
    malformed_query="malformed query {query!r} in {uri!r}; write builtin:{name}?key=value&... with keys from "
    "{sorted_keys}",
    unknown_key="unknown parameter {key!r} for builtin:{name}; allowed: {keys}",
)


def _parse_builtin(uri: str) -> _BuiltinSpec:
    name, values = _URI.parse(uri)
    n = _resolve_count(name, values["split"], values["n"])
    return _BuiltinSpec(name=name, split=values["split"], n=n, patch=values.get("patch", False))


def _resolve(uri: str, base_dir: Path) -> _BuiltinSpec | Path:
    if uri.startswith("builtin:"):
        return _parse_builtin(uri)
    path = Path(uri).expanduser()
    resolved = (path if path.is_absolute() else Path(base_dir) / path).resolve()
    if not resolved.exists():
        raise DataError(f"data: path {uri!r} does not exist (resolved to {resolved}); {DATA_FORMS}")
    if resolved.is_file() and resolved.suffix.lower() not in ARRAY_SUFFIXES:
        raise DataError(f"data: file {uri!r} is neither .npy nor .npz; {DATA_FORMS}")
    return resolved


def _image_files(directory: Path) -> list[Path]:
    files = sorted(
        path
        for path in directory.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(directory).parts)
    )
    if not files:
        raise DataError(
            f"data: directory {directory} holds no PNG/JPEG images; add *.png or *.jpg files, or {DATA_FORMS}"
        )
    return files


def _read_image(path: Path) -> np.ndarray:
    """Any PNG/JPEG as float32 (H, W, C) in [0, 1] with C in {1, 3}; alpha is composited on white."""
    try:
        image = imread(path)
    except Exception as error:  # imageio raises many types, with multi-line advice about plugins we don't need
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(
            f"data: cannot read image {path}, it is not a valid PNG/JPEG ({reason}); replace or remove the file"
        ) from None
    if image.ndim == 3 and image.shape[-1] == 4:
        image = rgba2rgb(image)
    elif image.ndim == 3 and image.shape[-1] == 2:  # gray + alpha
        image = image[..., :1]
    image = img_as_float32(image)
    return image[..., None] if image.ndim == 2 else image


def _load_directory(directory: Path) -> Samples:
    files = _image_files(directory)
    images = [_read_image(path) for path in files]
    height, width = Counter(image.shape[:2] for image in images).most_common(1)[0][0]
    channels = 3 if any(image.shape[-1] == 3 for image in images) else 1
    x = np.empty((len(images), height, width, channels), dtype=np.float32)
    for i, image in enumerate(images):
        if image.shape[-1] != channels:
            image = gray2rgb(image[..., 0])
        if image.shape[:2] != (height, width):
            image = resize(image, (height, width), order=1, anti_aliasing=True)
        x[i] = image
    ids = [path.relative_to(directory).as_posix() for path in files]
    return Samples(ids=ids, x=x, labels=None, masks=None, class_names=None)


def _as_images_or_table(array: np.ndarray, source: str) -> np.ndarray:
    """(N,D) stays tabular; (N,H,W), (N,H,W,C) and (N,C,H,W) become float32 (N,H,W,C) in [0, 1]."""
    if not np.issubdtype(array.dtype, np.number) and array.dtype != bool:
        raise DataError(f"data: {source} has dtype {array.dtype}; give a numeric array")
    if array.ndim == 2:
        x = array.astype(np.float32)
        if not np.isfinite(x).all():
            raise DataError(f"data: {source} contains NaN or infinite values; remove or impute them")
        return x
    if array.ndim == 3:
        array = array[..., None]
    elif array.ndim == 4 and array.shape[-1] not in (1, 3):
        if array.shape[1] not in (1, 3):
            raise DataError(
                f"data: {source} has shape {array.shape}; images need 1 or 3 channels, "
                "shaped (N,H,W), (N,H,W,C) or (N,C,H,W)"
            )
        array = array.transpose(0, 2, 3, 1)
    elif array.ndim != 4:
        raise DataError(
            f"data: {source} has shape {array.shape}; give (N,D) tabular data or (N,H,W), (N,H,W,C), (N,C,H,W) images"
        )
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array, dtype=np.float32) / 255.0
    x = np.ascontiguousarray(array, dtype=np.float32)
    low, high = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if not (np.isfinite([low, high]).all() and low >= 0.0 and high <= 1.0):
        raise DataError(
            f"data: {source} holds image values in [{low:g}, {high:g}], expected [0, 1]; "
            "scale them (e.g. divide 0..255 values by 255) or store them as uint8"
        )
    return x


def _as_labels(array: np.ndarray, n: int, source: str) -> np.ndarray:
    integral = np.issubdtype(array.dtype, np.integer) or (
        np.issubdtype(array.dtype, np.floating) and bool(np.all(np.mod(array, 1) == 0))
    )
    if array.shape != (n,) or not integral:
        raise DataError(f"data: {source} has shape {array.shape} and dtype {array.dtype}; give {n} integer labels")
    return array.astype(np.int64)


def _load_array_file(path: Path) -> Samples:
    try:
        if path.suffix.lower() == ".npy":
            arrays = {"x": np.load(path, allow_pickle=False)}
        else:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(
            f"data: cannot read {path}: {error}; save it with numpy.save/numpy.savez without pickled objects"
        ) from None
    image_key = next((key for key in NPZ_IMAGE_KEYS if key in arrays), None)
    if image_key is None:
        raise DataError(
            f"data: {path} has arrays {sorted(arrays)}; store the samples under 'x' or 'images' "
            "(and optional labels under 'labels' or 'y')"
        )
    x = _as_images_or_table(arrays[image_key], path.name)
    label_key = next((key for key in NPZ_LABEL_KEYS if key in arrays), None)
    labels = None if label_key is None else _as_labels(arrays[label_key], len(x), f"{path.name}['{label_key}']")
    ids = [f"row-{i:05d}" for i in range(len(x))]
    return Samples(ids=ids, x=x, labels=labels, masks=None, class_names=None)


def _load_builtin(spec: _BuiltinSpec, seed: int) -> Samples:
    """Builtin samples; ``breast_cancer`` ignores the seed (its split is fixed, see builtin_data)."""
    if seed < 0:
        raise DataError(f"seed {seed} is negative; builtin data needs a seed >= 0")
    ids = [f"{spec.name}-{spec.split}-{i:05d}" for i in range(spec.n)]
    if spec.name == "tabular-planted":
        x, labels = builtin_data.tabular_planted(spec.split, spec.n, seed)
        return Samples(
            ids=ids,
            x=x,
            labels=labels,
            masks=None,
            class_names=list(builtin_data.TABULAR_CLASS_NAMES),
            feature_names=list(builtin_data.TABULAR_FEATURE_NAMES),
        )
    if spec.name == "breast_cancer":
        x, labels = builtin_data.breast_cancer(spec.split, spec.n)
        feature_names, class_names = builtin_data.breast_cancer_names()
        return Samples(ids=ids, x=x, labels=labels, masks=None, class_names=class_names, feature_names=feature_names)
    images, masks, labels = builtin_data.shapes(spec.split, spec.n, seed, patch=spec.patch)
    return Samples(ids=ids, x=images, labels=labels, masks=masks, class_names=list(builtin_data.CLASS_NAMES))


def load_samples(uri: str, base_dir: Path, seed: int) -> Samples:
    """Samples from ``builtin:NAME?k=v``, an image directory or a .npy/.npz file; relative paths start at base_dir."""
    source = _resolve(uri, base_dir)
    if isinstance(source, _BuiltinSpec):
        return _load_builtin(source, seed)
    if source.is_dir():
        return _load_directory(source)
    return _load_array_file(source)


def _hash_file(digest: hashlib._Hash, path: Path) -> None:
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)


def data_fingerprint(uri: str, base_dir: Path) -> str:
    """sha256 of what the data holds, as a cache key; builtins hash their parameters and generator code.

    The seed is not part of it: callers that cache builtin data must key on the seed as well.
    """
    source = _resolve(uri, base_dir)
    digest = hashlib.sha256()
    if isinstance(source, _BuiltinSpec):
        digest.update(repr(source).encode())
        for generator in (builtin_data, palette):
            digest.update(Path(generator.__file__).read_bytes())
        if source.name == "breast_cancer":  # the rows come from scikit-learn's copy, not from our code
            digest.update(builtin_data.breast_cancer_digest())
    elif source.is_dir():
        for path in _image_files(source):
            digest.update(path.relative_to(source).as_posix().encode() + b"\0")
            _hash_file(digest, path)
    else:
        _hash_file(digest, source)
    return digest.hexdigest()


def _per_channel(values: list[float] | None, channels: int, name: str) -> np.ndarray | None:
    if values is None:
        return None
    if len(values) not in (1, channels):
        raise DataError(f"input.{name} has {len(values)} values for {channels} channels; give 1 or {channels}")
    return np.asarray(values, dtype=np.float32)


def to_model_input(
    samples: Samples,
    shape: tuple[int, ...],
    value_range: tuple[float, float] = (0.0, 1.0),
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> np.ndarray:
    """Images -> float32 (N, C, H, W) resized, channel-matched, scaled to value_range and normalized.

    Tabular -> float32 (N, D), normalized per feature by mean/std; value_range applies to images only.
    """
    shape = tuple(shape)
    if samples.kind == "tabular":
        if len(shape) != 1:
            raise DataError(
                f"data are tabular {samples.x.shape} but the model takes images {list(shape)}; "
                "give image data or a tabular model"
            )
        if samples.x.shape[1] != shape[0]:
            raise DataError(
                f"data have {samples.x.shape[1]} features but the model takes {shape[0]}; "
                "give data with matching columns or fix input.shape"
            )
        channels, x = shape[0], samples.x
    else:
        if len(shape) != 3 or shape[0] not in (1, 3):
            raise DataError(
                f"data are images {samples.x.shape[1:]} (H, W, C) but the model takes {list(shape)}; "
                "give tabular (N, D) data or set input.shape to [C, H, W] with C 1 or 3"
            )
        channels, height, width = shape
        x = samples.x
        if channels == 1 and x.shape[-1] == 3:
            x = rgb2gray(x)[..., None]  # gray first: resizing one channel is cheaper and commutes
        if x.shape[1:3] != (height, width):
            x = resize(x, (len(x), height, width, x.shape[-1]), order=1, anti_aliasing=True)
        if channels == 3 and x.shape[-1] == 1:
            x = np.repeat(x, 3, axis=-1)
        low, high = value_range
        x = x * (high - low) + low
    mean_values, std_values = _per_channel(mean, channels, "mean"), _per_channel(std, channels, "std")
    if mean_values is not None:
        x = x - mean_values
    if std_values is not None:
        if np.any(std_values == 0):
            raise DataError(f"input.std {std} contains 0; give positive standard deviations")
        x = x / std_values
    if samples.kind == "image":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, dtype=np.float32)


def to_display(
    x: np.ndarray,
    value_range: tuple[float, float] = (0.0, 1.0),
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> np.ndarray:
    """Model-input images (N, C, H, W) back to (N, H, W, C) in [0, 1]: what segmentation and overlays see."""
    channels = x.shape[1]
    images = x.transpose(0, 2, 3, 1).astype(np.float32)
    std_values, mean_values = _per_channel(std, channels, "std"), _per_channel(mean, channels, "mean")
    if std_values is not None:
        images = images * std_values
    if mean_values is not None:
        images = images + mean_values
    low, high = value_range
    return np.clip((images - low) / (high - low), 0.0, 1.0)
