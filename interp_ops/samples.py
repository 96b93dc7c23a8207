"""``Samples``, the one layout every data source is read into, and the readers of the two file forms: a folder of
PNG/JPEG images and a .npy/.npz array.

Each reader returns every sample's id and the first ``limit`` samples (all when None), decoding no others, so that a
check before the run reads a few samples and the run reads them all once.
"""

from __future__ import annotations

import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from imageio.v3 import improps
from skimage.color import gray2rgb, rgba2rgb
from skimage.io import imread
from skimage.transform import resize
from skimage.util import img_as_float32

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
NPZ_IMAGE_KEYS = ("x", "images")
NPZ_LABEL_KEYS = ("labels", "y")
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
class SamplePreview:
    """Every sample's id and the first samples (equal to the first of ``load_samples``): what a check before the run
    reads, without decoding the whole data set."""

    ids: list[str]
    head: Samples


def image_files(directory: Path) -> list[Path]:
    """The folder's PNG/JPEG files in id order, hidden files and folders left out."""
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


def _unreadable_image(path: Path, error: Exception) -> DataError:
    # imageio raises many types, with multi-line advice about plugins we don't need
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return DataError(
        f"data: cannot read image {path}, it is not a valid PNG/JPEG ({reason}); replace or remove the file"
    )


def _read_image(path: Path) -> np.ndarray:
    """Any PNG/JPEG as float32 (H, W, C) in [0, 1] with C in {1, 3}; alpha is composited on white."""
    try:
        image = imread(path)
    except Exception as error:
        raise _unreadable_image(path, error) from None
    if image.ndim == 3 and image.shape[-1] == 4:
        image = rgba2rgb(image)
    elif image.ndim == 3 and image.shape[-1] == 2:  # gray + alpha
        image = image[..., :1]
    image = img_as_float32(image)
    return image[..., None] if image.ndim == 2 else image


def _stored_shape(path: Path) -> tuple[int, int, int]:
    """The (H, W, C) that ``_read_image`` returns for ``path``, from the file's header: imageio's ``improps`` answers
    for the reader skimage's ``imread`` uses, without decoding pixels. Alpha is composited away as there."""
    try:
        shape = improps(path).shape
    except Exception as error:
        raise _unreadable_image(path, error) from None
    stored = shape[2] if len(shape) == 3 else 1
    return shape[0], shape[1], {4: 3, 2: 1}.get(stored, stored)


def read_image_folder(directory: Path, limit: int | None) -> tuple[list[str], Samples]:
    """Every image's id (its path in the folder) and the first ``limit`` images (all when None). Images are brought
    to the most common size, in colour if any image has colour: a layout read from the files' headers, so that only
    the images returned are decoded."""
    ids, chunks = image_folder_chunks(directory, limit)
    return ids, next(chunks)


def image_folder_chunks(directory: Path, rows: int | None) -> tuple[list[str], Iterator[Samples]]:
    """Every image's id, and the images decoded ``rows`` at a time (all at once when None), in id order, each chunk
    brought to the folder's layout (``read_image_folder``). The first chunk is all that is decoded until the next
    is asked for."""
    files = image_files(directory)
    shapes = [_stored_shape(path) for path in files]
    height, width = Counter(shape[:2] for shape in shapes).most_common(1)[0][0]
    channels = 3 if any(shape[2] == 3 for shape in shapes) else 1
    ids = [path.relative_to(directory).as_posix() for path in files]
    step = rows or len(files)

    def chunks() -> Iterator[Samples]:
        for start in range(0, len(files), step):
            read = files[start : start + step]
            x = np.empty((len(read), height, width, channels), dtype=np.float32)
            for i, path in enumerate(read):
                image = _read_image(path)
                if image.shape[-1] != channels:
                    image = gray2rgb(image[..., 0])
                if image.shape[:2] != (height, width):
                    image = resize(image, (height, width), order=1, anti_aliasing=True)
                x[i] = image
            yield Samples(ids=ids[start : start + len(read)], x=x, labels=None, masks=None, class_names=None)

    return ids, chunks()


def _as_images_or_table(array: np.ndarray, source: str, rows: slice) -> np.ndarray:
    """(N,D) stays tabular; (N,H,W), (N,H,W,C) and (N,C,H,W) become float32 (N,H,W,C) in [0, 1].

    Dtype and shape are checked on the whole array, values on its ``rows``, the only rows read: of a memory-mapped
    array, the rest stays on disk.
    """
    if not np.issubdtype(array.dtype, np.number) and array.dtype != bool:
        raise DataError(f"data: {source} has dtype {array.dtype}; give a numeric array")
    channels_first = array.ndim == 4 and array.shape[-1] not in (1, 3)
    if channels_first and array.shape[1] not in (1, 3):
        raise DataError(
            f"data: {source} has shape {array.shape}; images need 1 or 3 channels, "
            "shaped (N,H,W), (N,H,W,C) or (N,C,H,W)"
        )
    if array.ndim not in (2, 3, 4):
        raise DataError(
            f"data: {source} has shape {array.shape}; give (N,D) tabular data or (N,H,W), (N,H,W,C), (N,C,H,W) images"
        )
    rows = np.array(array[rows])
    if rows.ndim == 2:
        x = rows.astype(np.float32)
        if not np.isfinite(x).all():
            raise DataError(f"data: {source} contains NaN or infinite values; remove or impute them")
        return x
    if rows.ndim == 3:
        rows = rows[..., None]
    elif channels_first:
        rows = rows.transpose(0, 2, 3, 1)
    if rows.dtype == np.uint8:
        return np.ascontiguousarray(rows, dtype=np.float32) / 255.0
    x = np.ascontiguousarray(rows, dtype=np.float32)
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


def _open_npy(path: Path) -> np.ndarray:
    """Memory-mapped, so that only the rows taken are read; a file numpy cannot map (object dtype, truncated) is
    read as a whole, whose error says what is wrong with it."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError:
        return np.load(path, allow_pickle=False)


def read_array_file(path: Path, limit: int | None, start: int = 0) -> tuple[list[str], Samples]:
    """Every row's id and rows ``start`` to ``limit`` (to the end when None) as samples; a .npy file is
    memory-mapped (and unmapped when the rows are copied out), a .npz archive is read whole (a zip member cannot be
    memory-mapped)."""
    try:
        if path.suffix.lower() == ".npy":
            arrays = {"x": _open_npy(path)}
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
    rows = slice(start, limit)
    x = _as_images_or_table(arrays[image_key], path.name, rows)
    ids = [f"row-{i:05d}" for i in range(len(arrays[image_key]))]
    label_key = next((key for key in NPZ_LABEL_KEYS if key in arrays), None)
    labels = None if label_key is None else _as_labels(arrays[label_key], len(ids), f"{path.name}['{label_key}']")
    return ids, Samples(
        ids=ids[rows], x=x, labels=None if labels is None else labels[rows], masks=None, class_names=None
    )
