"""Where samples come from (builtins, image directories, numpy files) and their conversion to model input.

Every source is read into the same ``Samples`` layout (images channel-last in [0, 1], see
``interp_ops.samples``) so that the conversion to what a particular model expects happens in one place:
``to_model_input``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from skimage.color import rgb2gray
from skimage.transform import resize

from interp_ops import builtin_data, palette
from interp_ops.builtin_uri import BuiltinFamily, InvalidParameter, whole_number
from interp_ops.normalization import Normalization, NormalizationError
from interp_ops.samples import (
    DATA_FORMS,
    DataError,
    SamplePreview,
    Samples,
    image_files,
    image_folder_chunks,
    read_array_file,
    read_image_folder,
)

ARRAY_SUFFIXES = {".npy", ".npz"}
MAX_BUILTIN_SAMPLES = 100_000


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


def _load_builtin(spec: _BuiltinSpec, seed: int, limit: int | None) -> tuple[list[str], Samples]:
    """Builtin samples, the first ``limit`` generated (sample i never depends on how many are asked for: see
    builtin_data); ``breast_cancer`` ignores the seed (its split is fixed)."""
    if seed < 0:
        raise DataError(f"seed {seed} is negative; builtin data needs a seed >= 0")
    ids = [f"{spec.name}-{spec.split}-{i:05d}" for i in range(spec.n)]
    head = ids[:limit]
    if spec.name == "tabular-planted":
        x, labels = builtin_data.tabular_planted(spec.split, len(head), seed)
        return ids, Samples(
            ids=head,
            x=x,
            labels=labels,
            masks=None,
            class_names=list(builtin_data.TABULAR_CLASS_NAMES),
            feature_names=list(builtin_data.TABULAR_FEATURE_NAMES),
        )
    if spec.name == "breast_cancer":
        x, labels = builtin_data.breast_cancer(spec.split, len(head))
        feature_names, class_names = builtin_data.breast_cancer_names()
        return ids, Samples(
            ids=head, x=x, labels=labels, masks=None, class_names=class_names, feature_names=feature_names
        )
    images, masks, labels = builtin_data.shapes(spec.split, len(head), seed, patch=spec.patch)
    return ids, Samples(ids=head, x=images, labels=labels, masks=masks, class_names=list(builtin_data.CLASS_NAMES))


def _read(uri: str, base_dir: Path, seed: int, limit: int | None) -> tuple[list[str], Samples]:
    """Every sample's id, and the first ``limit`` samples (all when None)."""
    source = _resolve(uri, base_dir)
    if isinstance(source, _BuiltinSpec):
        return _load_builtin(source, seed, limit)
    if source.is_dir():
        return read_image_folder(source, limit)
    return read_array_file(source, limit)


def load_samples(uri: str, base_dir: Path, seed: int) -> Samples:
    """Samples from ``builtin:NAME?k=v``, an image directory or a .npy/.npz file; relative paths start at base_dir."""
    return _read(uri, base_dir, seed, None)[1]


def sample_chunks(uri: str, base_dir: Path, seed: int, rows: int) -> tuple[list[str], Iterator[Samples]]:
    """Every sample's id, and ``load_samples``'s samples ``rows`` at a time: an image folder is decoded and a .npy
    file read chunk by chunk, so a pass over a large data set holds one chunk; builtins (generated) and .npz
    archives (a zip member cannot be read in parts) are read whole and handed out in chunks."""
    source = _resolve(uri, base_dir)
    if isinstance(source, Path) and source.is_dir():
        return image_folder_chunks(source, rows)
    if isinstance(source, Path) and source.suffix.lower() == ".npy":
        ids, _ = read_array_file(source, 0)
        return ids, (read_array_file(source, stop, start)[1] for start, stop in _spans(len(ids), rows))
    ids, samples = _read(uri, base_dir, seed, None)
    return ids, (_rows_of(samples, start, stop) for start, stop in _spans(len(ids), rows))


def _spans(count: int, rows: int) -> Iterator[tuple[int, int]]:
    for start in range(0, count, rows):
        yield start, min(start + rows, count)


def _rows_of(samples: Samples, start: int, stop: int) -> Samples:
    def part(array):
        return None if array is None else array[start:stop]

    return dataclasses.replace(
        samples,
        ids=samples.ids[start:stop],
        x=samples.x[start:stop],
        labels=part(samples.labels),
        masks=part(samples.masks),
    )


def preview_samples(uri: str, base_dir: Path, seed: int, count: int) -> SamplePreview:
    """Every sample's id and the first ``count`` samples of ``load_samples``, decoding only those: an image folder's
    other files give their headers, a .npy file is memory-mapped, a builtin generates ``count``. Values are checked
    on the samples read (a NaN in a later row shows when ``load_samples`` reads it)."""
    ids, head = _read(uri, base_dir, seed, count)
    return SamplePreview(ids, head)


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
        for path in image_files(source):
            digest.update(path.relative_to(source).as_posix().encode() + b"\0")
            _hash_file(digest, path)
    else:
        _hash_file(digest, source)
    return digest.hexdigest()


def to_model_input(
    samples: Samples,
    shape: tuple[int, ...],
    value_range: tuple[float, float] = (0.0, 1.0),
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> np.ndarray:
    """Images -> float32 (N, C, H, W) resized, channel-matched, then normalized (``interp_ops.normalization``:
    scaled to value_range, mean subtracted, divided by std).

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
        normalization = _normalization(shape[0], None, mean, std)
        return np.ascontiguousarray(normalization.apply(samples.x), dtype=np.float32)
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise DataError(
            f"data are images {samples.x.shape[1:]} (H, W, C) but the model takes {list(shape)}; "
            "give tabular (N, D) data or set input.shape to [C, H, W] with C 1 or 3"
        )
    channels, height, width = shape
    normalization = _normalization(channels, value_range, mean, std)
    x = samples.x
    if channels == 1 and x.shape[-1] == 3:
        x = rgb2gray(x)[..., None]  # gray first: resizing one channel is cheaper and commutes
    if x.shape[1:3] != (height, width):
        x = resize(x, (len(x), height, width, x.shape[-1]), order=1, anti_aliasing=True)
    if channels == 3 and x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return np.ascontiguousarray(normalization.apply(x).transpose(0, 3, 1, 2), dtype=np.float32)


def to_display(
    x: np.ndarray,
    value_range: tuple[float, float] = (0.0, 1.0),
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> np.ndarray:
    """Model-input images (N, C, H, W) back to (N, H, W, C) in [0, 1]: what segmentation and overlays see."""
    normalization = _normalization(x.shape[1], value_range, mean, std)
    return np.clip(normalization.invert(x.transpose(0, 2, 3, 1).astype(np.float32)), 0.0, 1.0)


def _normalization(channels: int, value_range, mean, std) -> Normalization:
    try:
        return Normalization.checked(channels, value_range, mean, std)
    except NormalizationError as error:
        raise DataError(f"input.{error}") from None
