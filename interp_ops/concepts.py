"""Concept data for network dissection: a reader for Broden-format folders and a generator of a small one.

A Broden folder (Bau et al. 2017) holds

- ``index.csv``: one row per image with columns ``image, split, ih, iw, sh, sw`` and one column per category.
  A category cell lists ';'-separated entries: relative paths (under ``images/``) of mask PNGs whose pixels
  encode label = R + 256*G, or label numbers that apply to the whole image;
- ``label.csv``: ``number, name, category, frequency, coverage, syns``, ``category`` like ``color(3);object(7)``;
- ``category.csv``: ``name, first, last, count, frequency``;
- ``c_<category>.csv``: ``code, number, name, frequency, coverage``, one per category;
- ``images/``: the images and masks. Label 0 means unlabeled.

``load_concepts`` reads such a folder from a local path, a ``file://`` URI, any URI pyarrow understands, or a
pyarrow / fsspec filesystem, and checks it up front: every file that index.csv names must exist inside the folder
(symbolic links leading out of it are refused like ``../`` paths), every label must be declared, and so must every
category column that holds labels (empty ones are ignored, as NetDissect-Lite ignores them).
``ConceptSet.check_mask_headers`` reads the first bytes of every mask (a PNG of its row's size?), for a fraction of
the cost of decoding; the label ids inside a mask are checked when it is read, by ``ConceptSet.batches`` or at once
by ``ConceptSet.verify``.

``resolve_concepts`` also understands ``builtin:concepts?n=...&size=...&seed=...``: synthetic scenes with pixel-level
``color``, ``object`` and ``texture`` concepts and an image-level ``scene``, written once as a Broden folder into a
cache directory and read back like any other (see ``write_builtin_concepts`` for how concepts are sized).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import shutil
import struct
import tempfile
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qsl, unquote, urlsplit

import numpy as np
from PIL import Image

META_COLUMNS = ("image", "split", "ih", "iw", "sh", "sw")
SIZE_COLUMNS = ("ih", "iw", "sh", "sw")
LABEL_COLUMNS = ("number", "name", "category")
CATEGORY_COLUMNS = ("name",)
CATEGORY_LABEL_COLUMNS = ("code", "number", "name")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_MASK_LABEL = 255 + 256 * 255  # R + 256*G
BRODEN_LAYOUT = "a Broden folder holds index.csv, label.csv, category.csv, c_<category>.csv and images/"
_CATEGORY_ENTRY = re.compile(r"^([^()]+)\((\d+)\)$")
REMOTE_READS_IN_FLIGHT = 16  # mask headers read at once from object stores, where each read is a round trip


class ConceptDataError(ValueError):
    """Bad concept data; the message names the file (and row or column) and the fix."""


# --- the data model -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ConceptBatch:
    """Images and concept labels of consecutive images of a ConceptSet.

    ``images`` is float32 (B, H, W, 3) in [0, 1], or None when the batch was read without images.
    ``pixel_labels[category]`` is int32 (B, K, sh, sw): K >= 1 mask layers per image (an image may list several
    masks for one category; images with fewer layers are padded with 0), holding label ids, 0 = unlabeled. A
    label number written in a pixel-level category's cell fills a whole layer. Dissection counts every layer,
    as NetDissect does; ``label_map`` flattens them. ``image_labels[category]`` holds each image's set of label
    ids of an image-level category, as a sorted tuple.
    """

    indices: np.ndarray
    images: np.ndarray | None
    pixel_labels: dict[str, np.ndarray]
    image_labels: dict[str, list[tuple[int, ...]]]

    def __len__(self) -> int:
        return len(self.indices)

    def label_map(self, category: str) -> np.ndarray:
        """(B, sh, sw) int32: one label per pixel; where an image's masks overlap, the later-listed mask wins."""
        layers = self.pixel_labels[category]
        combined = layers[:, 0].copy()
        for k in range(1, layers.shape[1]):
            np.copyto(combined, layers[:, k], where=layers[:, k] != 0)
        return combined


@dataclass(frozen=True)
class _Row:
    number: int  # 1-based data row of index.csv (the header is not counted)
    image: str
    image_size: tuple[int, int]
    mask_size: tuple[int, int]
    entries: dict[str, tuple[int | str, ...]]  # category -> label numbers and mask paths, as listed


class ConceptSet:
    """A checked Broden-format concept data set; images and masks are read lazily, batch by batch.

    ``labels`` maps label id -> name, ``label_category`` label id -> its category (a label listed in several
    categories belongs to the one where its coverage is largest, as in NetDissect), ``categories`` category name
    -> "pixel" (masks) or "image" (whole-image label numbers only), in category.csv order.

    Images of different sizes are resized bilinearly to the first image's size (ih, iw); masks of a size other
    than the first row's (sh, sw) are resized to it by nearest neighbour (labels are never blended).
    """

    def __init__(self, filesystem, root: str, rows: list[_Row], labels: dict[int, str],
                 label_category: dict[int, str], categories: dict[str, str], source: str):
        self._fs = filesystem
        self._root = root
        self._rows = rows
        self.labels = labels
        self.label_category = label_category
        self.categories = categories
        self.source = source
        self.image_size = rows[0].image_size
        self.mask_size = rows[0].mask_size
        known = np.zeros(MAX_MASK_LABEL + 1, dtype=bool)
        known[[label for label in labels if label <= MAX_MASK_LABEL]] = True
        known[0] = True
        self._known_mask_label = known
        self._known_through = int(np.argmin(known)) - 1 if not known.all() else MAX_MASK_LABEL

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        kinds = ", ".join(f"{name} ({kind})" for name, kind in self.categories.items())
        return f"ConceptSet({self.source!r}: {len(self)} images, {len(self.labels)} labels in {kinds})"

    @property
    def image_ids(self) -> list[str]:
        return [row.image for row in self._rows]

    def head(self, n: int) -> ConceptSet:
        """The first ``n`` images as a ConceptSet of their own (same labels and categories)."""
        if n < 1:
            raise ConceptDataError(f"head(n={n}): give n >= 1")
        return ConceptSet(self._fs, self._root, self._rows[:n], self.labels, self.label_category, self.categories,
                          self.source)

    def pixel_categories(self) -> list[str]:
        return [name for name, kind in self.categories.items() if kind == "pixel"]

    def image_categories(self) -> list[str]:
        return [name for name, kind in self.categories.items() if kind == "image"]

    def batches(self, batch_size: int = 64, *, images: bool = True, masks: bool = True) -> Iterator[ConceptBatch]:
        """Consecutive batches in index.csv order; ``images=False`` / ``masks=False`` skip reading them."""
        if batch_size < 1:
            raise ConceptDataError(f"batch_size={batch_size}; give a batch size of at least 1")
        for start in range(0, len(self._rows), batch_size):
            yield self._batch(range(start, min(start + batch_size, len(self._rows))), images, masks)

    def verify(self) -> None:
        """Read every mask once; raises ConceptDataError on the first one not a PNG or holding an unknown label."""
        for _ in self.batches(256, images=False):
            pass

    def check_mask_headers(self) -> None:
        """Read the first 24 bytes of every mask: each must be a PNG of its row's size (sh x sw). Raises
        ConceptDataError naming the first that is not, before an audit spends minutes on other methods; what only
        decoding shows (label ids) is left to ``batches`` and ``verify``. About 30 us a mask on a local disk;
        on other filesystems each read is a round trip, so several are in flight at once."""
        import pyarrow.fs as pafs

        masks = [(row, category, entry) for row in self._rows for category, entries in row.entries.items()
                 for entry in entries if isinstance(entry, str)]

        def head(mask: tuple[_Row, str, str]) -> bytes:
            row, category, relative = mask
            return _read_head(self._fs, self._path(relative), _mask_where(relative, row, category), _PNG_HEAD)

        pool = None if isinstance(self._fs, pafs.LocalFileSystem) else ThreadPoolExecutor(REMOTE_READS_IN_FLIGHT)
        try:
            heads = map(head, masks) if pool is None else pool.map(head, masks)
            for (row, category, relative), data in zip(masks, heads):
                _check_mask_header(data, row, _mask_where(relative, row, category))
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)

    # -- reading --

    def _path(self, relative: str) -> str:
        return f"{self._root}/images/{relative}"

    def _batch(self, positions: range, with_images: bool, with_masks: bool) -> ConceptBatch:
        rows = [self._rows[i] for i in positions]
        images = np.stack([self._read_image(row) for row in rows]) if with_images else None
        pixel_labels: dict[str, np.ndarray] = {}
        image_labels: dict[str, list[tuple[int, ...]]] = {}
        for category, kind in self.categories.items():
            if kind == "image":
                image_labels[category] = [tuple(sorted(set(row.entries.get(category, ())))) for row in rows]
            elif with_masks:
                pixel_labels[category] = self._read_layers(rows, category)
        return ConceptBatch(np.asarray(list(positions), dtype=np.int64), images, pixel_labels, image_labels)

    def _read_image(self, row: _Row) -> np.ndarray:
        data = _read_bytes(self._fs, self._path(row.image), f"image {row.image!r} (index.csv row {row.number})")
        try:
            with _open_image(data) as opened:
                image = _as_rgb(opened)
        except Exception as error:  # PIL raises many types for undecodable files
            raise ConceptDataError(
                f"concepts: image {row.image!r} (index.csv row {row.number}) cannot be decoded "
                f"({type(error).__name__}: {error}); replace it with a PNG or JPEG"
            ) from None
        if image.shape[:2] != self.image_size:
            from skimage.transform import resize

            image = resize(image, self.image_size, order=1, anti_aliasing=True).astype(np.float32)
        return image

    def _read_layers(self, rows: list[_Row], category: str) -> np.ndarray:
        depth = max(1, max(len(row.entries.get(category, ())) for row in rows))
        out = np.zeros((len(rows), depth, *self.mask_size), dtype=np.int32)
        for b, row in enumerate(rows):
            for k, entry in enumerate(row.entries.get(category, ())):
                out[b, k] = entry if isinstance(entry, int) else self._read_mask(row, category, entry)
        return out

    def _read_mask(self, row: _Row, category: str, relative: str) -> np.ndarray:
        where = _mask_where(relative, row, category)
        data = _read_bytes(self._fs, self._path(relative), where)
        if not data.startswith(PNG_SIGNATURE):
            raise ConceptDataError(_not_png(where))
        try:
            with _open_image(data) as opened:
                labels = _decode_mask(opened)
        except Exception as error:
            raise ConceptDataError(f"concepts: {where} cannot be decoded ({type(error).__name__}: {error})") from None
        if labels.shape != row.mask_size:
            raise ConceptDataError(_wrong_size(where, labels.shape, row))
        # labels 0..known_through are all declared: then the maximum settles it (3 us instead of 13 us per mask)
        settled = labels.dtype.kind == "u" and labels.size and labels.max() <= self._known_through
        unknown = None if settled else ~self._known_mask_label[labels]
        if unknown is not None and unknown.any():
            ids = np.unique(labels[unknown])
            shown = ", ".join(map(str, ids[:5])) + (", ..." if len(ids) > 5 else "")
            raise ConceptDataError(
                f"concepts: {where} holds label id(s) {shown} that label.csv does not list; "
                "add them to label.csv (and c_<category>.csv) or fix the mask"
            )
        if labels.shape != self.mask_size:
            labels = _resize_nearest(labels, self.mask_size)
        return labels


def _mask_where(relative: str, row: _Row, category: str) -> str:
    return f"mask {relative!r} (index.csv row {row.number}, category {category!r})"


def _not_png(where: str) -> str:
    return (f"concepts: {where} is not a PNG file; Broden masks are PNGs whose pixels encode label = R + 256*G: "
            "convert it to PNG or remove it from index.csv")


def _wrong_size(where: str, shape: tuple[int, int], row: _Row) -> str:
    return (f"concepts: {where} is {shape[0]}x{shape[1]} pixels but the row gives sh={row.mask_size[0]}, "
            f"sw={row.mask_size[1]}; fix sh/sw or the mask")


_PNG_CHUNK = struct.Struct(">I4s")
_PNG_HEADER = struct.Struct(">IIBBBBB")
_PNG_HEAD = len(PNG_SIGNATURE) + _PNG_CHUNK.size + 8  # signature, IHDR length and type, width and height


def _check_mask_header(head: bytes, row: _Row, where: str) -> None:
    """A PNG starts with its signature and the IHDR chunk, which gives its width and height."""
    if len(head) < _PNG_HEAD or not head.startswith(PNG_SIGNATURE):
        raise ConceptDataError(_not_png(where))
    _, kind = _PNG_CHUNK.unpack_from(head, len(PNG_SIGNATURE))
    if kind != b"IHDR":
        raise ConceptDataError(f"concepts: {where} is a damaged PNG (no IHDR chunk first); write the mask again")
    width, height = struct.unpack_from(">II", head, len(PNG_SIGNATURE) + _PNG_CHUNK.size)
    if (height, width) != row.mask_size:
        raise ConceptDataError(_wrong_size(where, (height, width), row))
_PNG_MODES = {0: "L", 2: "RGB", 4: "LA", 6: "RGBA"}  # colour type -> mode, at 8 bits per sample


def _plain_png(data: bytes) -> Image.Image | None:
    """Decode an 8-bit, non-interlaced, unpaletted PNG with PIL's own zip decoder, skipping the Python-level work
    of ``Image.open`` / ``load``: the same pixels, in 30 us instead of 45 us for a 64x64 mask (masks are read
    ~3 per image, and that overhead holds the GIL the model and the tally need). None for anything else (palette,
    transparency chunk, other depths, interlacing, animation, a bad checksum, a truncated file, more pixels than
    PIL's decompression-bomb limit): ``Image.open`` then decodes it, or raises its usual error."""
    if not data.startswith(PNG_SIGNATURE):
        return None
    try:
        header, idat, position = None, [], len(PNG_SIGNATURE)
        while True:
            length, kind = _PNG_CHUNK.unpack_from(data, position)
            end = position + 8 + length
            body = data[position + 8:end]
            if len(body) != length or zlib.crc32(body, zlib.crc32(kind)) != int.from_bytes(data[end:end + 4], "big"):
                return None
            if kind == b"IHDR":
                header = _PNG_HEADER.unpack(body)
            elif kind == b"IDAT":
                idat.append(body)
            elif kind == b"IEND":
                break
            elif kind in (b"PLTE", b"tRNS", b"acTL", b"fcTL", b"fdAT") or not kind[0] & 0x20:
                return None  # palettes, transparency, animation, unknown critical chunks: left to PIL
            position = end + 4
        width, height, depth, colour, compression, filtering, interlace = header
        if depth != 8 or colour not in _PNG_MODES or compression or filtering or interlace or not idat:
            return None
        if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
            return None
        mode = _PNG_MODES[colour]
        return Image.frombytes(mode, (width, height), b"".join(idat), "zip", mode)
    except Exception:  # malformed: PIL's Image.open gives the error
        return None


def _open_image(data: bytes) -> Image.Image:
    image = _plain_png(data)
    return image if image is not None else Image.open(io.BytesIO(data))


def _as_rgb(image: Image.Image) -> np.ndarray:
    """float32 (H, W, 3) in [0, 1]; transparency is composited on white, as datasets.py does."""
    if image.mode == "RGB":  # the usual case, without convert()'s copy
        width, height = image.size
        return np.frombuffer(image.tobytes(), dtype=np.uint8).reshape(height, width, 3).astype(np.float32) / 255.0
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[..., 3:]
        return rgba[..., :3] * alpha + (1.0 - alpha)
    if image.mode in ("I;16", "I;16B", "I"):
        gray = np.asarray(image, dtype=np.float32)
        gray = gray / (65535.0 if gray.max() > 255 else 255.0)
        return np.repeat(gray[..., None], 3, axis=-1)
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def _decode_mask(image: Image.Image) -> np.ndarray:
    """Label ids (H, W), an integer array: R + 256*G for colour PNGs, the value itself for grayscale ones."""
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGB", "RGBA"):
        # R + 256*G is the little-endian uint16 at each pixel's first byte: a strided view of the raw bytes
        width, height = image.size
        step = len(image.mode)
        return np.ndarray((height, width), dtype="<u2", buffer=image.tobytes(), strides=(step * width, step))
    if image.mode == "LA":
        image = image.getchannel("L")
    if image.mode in ("L", "1", "I", "I;16", "I;16B"):
        return np.asarray(image, dtype=np.int32)
    raise ValueError(f"PNG mode {image.mode} cannot hold labels; write RGB masks")


def _resize_nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize (pixel centres, as PIL's NEAREST): labels are never blended."""
    rows = np.minimum(((np.arange(size[0]) + 0.5) * labels.shape[0] / size[0]).astype(int), labels.shape[0] - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * labels.shape[1] / size[1]).astype(int), labels.shape[1] - 1)
    return labels[rows[:, None], cols[None, :]]


# --- the reader ---------------------------------------------------------------------------------


def _read_bytes(filesystem, path: str, what: str) -> bytes:
    return _read_head(filesystem, path, what, None)


def _read_head(filesystem, path: str, what: str, size: int | None) -> bytes:
    """The first ``size`` bytes of a file (all of it for None)."""
    try:
        with filesystem.open_input_file(path) as stream:
            return stream.read(size)
    except (FileNotFoundError, OSError) as error:
        raise ConceptDataError(f"concepts: cannot read {what} at {path}: {error}") from None


def _as_pyarrow(filesystem):
    """A pyarrow FileSystem for a pyarrow or fsspec filesystem."""
    import pyarrow.fs as pafs

    if isinstance(filesystem, pafs.FileSystem):
        return filesystem
    try:
        import fsspec
    except ImportError:  # pragma: no cover - fsspec is installed with the project's dependencies
        fsspec = None
    if fsspec is not None and isinstance(filesystem, fsspec.AbstractFileSystem):
        return pafs.PyFileSystem(pafs.FSSpecHandler(filesystem))
    raise ConceptDataError(
        f"concepts: filesystem {type(filesystem).__name__} is neither a pyarrow.fs.FileSystem nor an fsspec "
        "filesystem; pass one of those, or a local path"
    )


def _locate(uri: str, base_dir: Path | None, filesystem) -> tuple[object, str]:
    """(pyarrow filesystem, folder path inside it) for a path, a file:// URI, another URI, or a given filesystem."""
    import pyarrow.fs as pafs

    if filesystem is not None:
        path = urlsplit(uri).path if uri.startswith("file://") else uri
        return _as_pyarrow(filesystem), path.rstrip("/") or "/"
    parts = urlsplit(uri)
    if parts.scheme == "file":
        return pafs.LocalFileSystem(), str(Path(unquote(parts.path)).resolve())
    if parts.scheme and len(parts.scheme) > 1 and "://" in uri:  # one letter would be a Windows drive
        try:
            fs, path = pafs.FileSystem.from_uri(uri)
        except Exception as error:
            raise ConceptDataError(
                f"concepts: cannot open {uri!r} ({error}); give a local folder, a file:// URI, a URI that "
                "pyarrow.fs supports, or pass a filesystem"
            ) from None
        return fs, path.rstrip("/")
    path = Path(uri).expanduser()
    if not path.is_absolute():
        path = Path(base_dir if base_dir is not None else Path.cwd()) / path
    return pafs.LocalFileSystem(), str(path.resolve())


def _read_csv(filesystem, root: str, name: str, required: tuple[str, ...]) -> list[dict[str, str]]:
    import pyarrow.fs as pafs

    path = f"{root}/{name}"
    if filesystem.get_file_info(path).type != pafs.FileType.File:
        raise ConceptDataError(f"concepts: {name} is missing from {root}; {BRODEN_LAYOUT}")
    text = _read_bytes(filesystem, path, name).decode("utf-8-sig")
    reader = csv.DictReader(io.StringIO(text))
    columns = reader.fieldnames or []
    for column in required:
        if column not in columns:
            raise ConceptDataError(
                f"concepts: {name} has no column {column!r} (it has {', '.join(columns) or 'no header'}); "
                f"add the column"
            )
    return list(reader)


def _parse_int(value: str, what: str, minimum: int = 0) -> int:
    text = (value or "").strip()
    if not text.isdigit() or int(text) < minimum:
        raise ConceptDataError(f"concepts: {what} is {value!r}; give a whole number >= {minimum}")
    return int(text)


def _parse_float(value: str | None) -> float:
    try:
        return float(value) if value not in (None, "") else 0.0
    except ValueError:
        return 0.0


def _read_categories(filesystem, root: str) -> list[str]:
    rows = _read_csv(filesystem, root, "category.csv", CATEGORY_COLUMNS)
    names = [row["name"].strip() for row in rows]
    for number, name in enumerate(names, start=1):
        if not name or name in META_COLUMNS:
            raise ConceptDataError(f"concepts: category.csv row {number} names category {name!r}; give another name")
    if len(set(names)) != len(names):
        raise ConceptDataError(f"concepts: category.csv lists a category twice ({names}); list each once")
    if not names:
        raise ConceptDataError("concepts: category.csv lists no categories; list at least one (e.g. object)")
    return names


def _read_labels(filesystem, root: str, categories: list[str]) -> tuple[dict[int, str], dict[int, str]]:
    """Label names and each label's primary category: where its coverage (c_<category>.csv) is largest."""
    membership: dict[int, set[str]] = {}
    names: dict[int, str] = {}
    for number, row in enumerate(_read_csv(filesystem, root, "label.csv", LABEL_COLUMNS), start=1):
        label = _parse_int(row["number"], f"label.csv row {number}, column 'number'")
        if label == 0:
            continue  # 0 is unlabeled by definition; some folders list it
        if label in names:
            raise ConceptDataError(f"concepts: label.csv row {number} repeats label number {label}; number labels once")
        names[label] = row["name"].strip()
        membership[label] = set()
        for entry in filter(None, (part.strip() for part in (row["category"] or "").split(";"))):
            match = _CATEGORY_ENTRY.match(entry)
            if match is None:
                raise ConceptDataError(
                    f"concepts: label.csv row {number} has category {entry!r}; write category(code), e.g. color(3)"
                )
            if match.group(1) not in categories:
                raise ConceptDataError(
                    f"concepts: label.csv row {number} puts label {label} in category {match.group(1)!r}, which "
                    "category.csv does not list; add the category or fix the label"
                )
            membership[label].add(match.group(1))
    coverage: dict[tuple[str, int], float] = {}
    for category in categories:
        name = f"c_{category}.csv"
        for number, row in enumerate(_read_csv(filesystem, root, name, CATEGORY_LABEL_COLUMNS), start=1):
            label = _parse_int(row["number"], f"{name} row {number}, column 'number'")
            if label == 0:
                continue
            if label not in names:
                raise ConceptDataError(
                    f"concepts: {name} row {number} lists label {label}, which label.csv does not; "
                    "add it to label.csv or remove the row"
                )
            membership[label].add(category)
            coverage[(category, label)] = _parse_float(row.get("coverage"))
    primary: dict[int, str] = {}
    for label, member_of in membership.items():
        if not member_of:
            raise ConceptDataError(
                f"concepts: label {label} ({names[label]!r}) belongs to no category; give it one in label.csv"
            )
        # NetDissect: the category with the largest coverage; ties go to the later category
        primary[label] = max(member_of, key=lambda c: (coverage.get((c, label), 0.0), categories.index(c)))
    return names, primary


def _list_files(filesystem, root: str) -> set[str]:
    import pyarrow.fs as pafs

    images = f"{root}/images"
    if filesystem.get_file_info(images).type != pafs.FileType.Directory:
        raise ConceptDataError(f"concepts: folder images/ is missing from {root}; {BRODEN_LAYOUT}")
    infos = filesystem.get_file_info(pafs.FileSelector(images, recursive=True))
    prefix = len(images) + 1
    return {info.path[prefix:] for info in infos if info.type == pafs.FileType.File}


def _any_link(path: str) -> bool:
    """Whether ``path`` is a symbolic link or holds one, at any depth (links are seen, never followed)."""
    if os.path.islink(path):
        return True
    folders = [path]
    while folders:
        with os.scandir(folders.pop()) as entries:
            for entry in entries:
                if entry.is_symlink():
                    return True
                if entry.is_dir(follow_symlinks=False):
                    folders.append(entry.path)
    return False


def _links_leaving(filesystem, root: str, files: set[str]) -> dict[str, str]:
    """Files under images/ that symbolic links (theirs or a parent folder's) lead out of the concept folder, with
    where they lead: a folder must not read what lies outside it, as ``../`` paths cannot. Only local folders have
    links, and without any link under images/ nothing can lead out, so most folders cost one directory walk."""
    import pyarrow.fs as pafs

    images = f"{root}/images"
    if not isinstance(filesystem, pafs.LocalFileSystem) or not _any_link(images):
        return {}
    inside = os.path.realpath(root)
    leaving = {}
    for relative in files:
        target = os.path.realpath(f"{images}/{relative}")
        if os.path.commonpath([inside, target]) != inside:
            leaving[relative] = target
    return leaving


def _missing_file(where: str, kind: str, name: str, leaving: dict[str, str], fix: str) -> ConceptDataError:
    if name in leaving:
        return ConceptDataError(
            f"concepts: {where} names {kind} {name!r}, a symbolic link to {leaving[name]}, outside the concept "
            "folder; copy the file into the folder's images/ instead of linking it"
        )
    return ConceptDataError(f"concepts: {where} names {kind} {name!r}, which is not under images/; {fix}")


def _unlisted_columns_with_labels(raw: list[dict], categories: list[str]) -> list[str]:
    """index.csv columns that category.csv does not list, yet hold entries. NetDissect-Lite ignores unlisted
    columns, and real Broden folders carry empty ones; only one that holds labels is a mistake worth stopping for
    (its labels would be silently dropped)."""
    unlisted = [c for c in raw[0] if c is not None and c not in META_COLUMNS and c not in categories]
    return [c for c in unlisted if any((record[c] or "").strip() for record in raw)]


def _read_index(filesystem, root: str, categories: list[str], labels: dict[int, str],
                files: set[str], leaving: dict[str, str] | None = None) -> list[_Row]:
    """Rows of index.csv; ``files`` are the files under images/ that it may name, ``leaving`` those refused because
    a link leads them out of the folder."""
    leaving = leaving or {}
    raw = _read_csv(filesystem, root, "index.csv", META_COLUMNS + tuple(categories))
    if not raw:
        raise ConceptDataError("concepts: index.csv lists no images; add one row per image")
    holding = _unlisted_columns_with_labels(raw, categories)
    if holding:
        first = next(number for number, record in enumerate(raw, start=1) if (record[holding[0]] or "").strip())
        raise ConceptDataError(
            f"concepts: index.csv column(s) {holding} hold labels (row {first}: {raw[first - 1][holding[0]]!r}) but "
            "category.csv does not list them; add them to category.csv (with a c_<category>.csv) or empty the "
            "column(s)"
        )
    rows = []
    for number, record in enumerate(raw, start=1):
        where = f"index.csv row {number}"
        if any((cell or "").strip() for cell in record.get(None) or ()):
            raise ConceptDataError(f"concepts: {where} has more cells than the header has columns; remove them or "
                                   "name their column in the header")
        image = (record["image"] or "").strip()
        if not image:
            raise ConceptDataError(f"concepts: {where} has an empty 'image' cell; name the image file")
        if image not in files:
            raise _missing_file(where, "image", image, leaving, "add it")
        ih, iw, sh, sw = (_parse_int(record[c], f"{where}, column {c!r}", minimum=1) for c in SIZE_COLUMNS)
        entries: dict[str, tuple[int | str, ...]] = {}
        for category in categories:
            parsed: list[int | str] = []
            for entry in filter(None, (part.strip() for part in (record[category] or "").split(";"))):
                if entry.isdigit():
                    label = int(entry)
                    if label not in labels:
                        raise ConceptDataError(
                            f"concepts: {where}, column {category!r} has label id {label}, which label.csv "
                            "does not list; add it to label.csv or fix the row"
                        )
                    parsed.append(label)
                elif entry in files:
                    parsed.append(entry)
                else:
                    raise _missing_file(f"{where}, column {category!r}", "mask", entry, leaving,
                                        "add the mask or fix the row")
            if parsed:
                entries[category] = tuple(parsed)
        rows.append(_Row(number, image, (ih, iw), (sh, sw), entries))
    return rows


def _category_kinds(categories: list[str], rows: list[_Row]) -> dict[str, str]:
    """A category is image-level when every cell entry is a label number (Broden's scene), else pixel-level."""
    kinds = {}
    for category in categories:
        entries = [entry for row in rows for entry in row.entries.get(category, ())]
        kinds[category] = "image" if entries and all(isinstance(e, int) for e in entries) else "pixel"
    return kinds


def load_concepts(uri: str, base_dir: Path | None = None, filesystem=None) -> ConceptSet:
    """Read and check a Broden-format folder: a local path (relative ones start at base_dir, else the working
    directory), a ``file://`` or other pyarrow-supported URI, or a path inside ``filesystem`` (pyarrow or fsspec).
    """
    import pyarrow.fs as pafs

    fs, root = _locate(str(uri), base_dir, filesystem)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise ConceptDataError(f"concepts: folder {uri!r} does not exist (looked for {root}); {BRODEN_LAYOUT}")
    if info.type != pafs.FileType.Directory:
        raise ConceptDataError(f"concepts: {uri!r} is not a folder; {BRODEN_LAYOUT}")
    if not fs.get_file_info(pafs.FileSelector(root, recursive=False)):
        raise ConceptDataError(f"concepts: folder {uri!r} is empty; {BRODEN_LAYOUT}")
    categories = _read_categories(fs, root)
    labels, label_category = _read_labels(fs, root, categories)
    if not labels:
        raise ConceptDataError("concepts: label.csv lists no labels; list at least one (number 1 upwards)")
    files = _list_files(fs, root)
    leaving = _links_leaving(fs, root, files)
    rows = _read_index(fs, root, categories, labels, files - leaving.keys(), leaving)
    return ConceptSet(fs, root, rows, labels, label_category, _category_kinds(categories, rows), str(uri))


# --- builtin:concepts ---------------------------------------------------------------------------

BUILTIN_PREFIX = "builtin:concepts"
DEFAULT_N, DEFAULT_SIZE = 500, 64
MAX_N, SIZE_RANGE = 100_000, (16, 512)
COLORS = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "cyan": (0.0, 1.0, 1.0),
    "magenta": (1.0, 0.0, 1.0),
    "orange": (1.0, 0.5, 0.0),
    "purple": (0.5, 0.0, 1.0),
}
OBJECTS = ("circle", "square", "diamond", "triangle", "star", "cross")
SYNTHETIC_TEXTURES = (
    "stripes-horizontal-fine", "stripes-horizontal-wide", "stripes-vertical-fine", "stripes-vertical-wide",
    "dots", "checker", "grid",
)
PHOTO_TEXTURES = ("brick", "grass", "gravel")  # photographs that ship with scikit-image
TEXTURES = SYNTHETIC_TEXTURES + PHOTO_TEXTURES
SCENES = {"indoor": SYNTHETIC_TEXTURES, "outdoor": PHOTO_TEXTURES}  # a scene follows from the texture drawn
BUILTIN_CATEGORIES = {"color": tuple(COLORS), "object": OBJECTS, "texture": TEXTURES, "scene": tuple(SCENES)}
# Sizes as fractions of the image side. Each concept should cover about 1-3% of all pixels of the data set:
# IoU <= min(A, G) / max(A, G), and the activated area A is about `quantile` (0.5%) of all pixels, so much
# larger concepts could never score well, and much smaller ones neither.
OBJECT_SIDE = (0.22, 0.34)  # sqrt(object area) / image side; 1 object, a second one half of the time
TEXTURE_SIDE = (0.35, 0.6)  # the textured rectangle's height and width / image side
OBJECT_BRIGHTNESS = (0.85, 1.0)
PLACEMENT_TRIES = 50


def _generator_key(n: int, size: int, seed: int) -> str:
    import skimage

    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(f"{n},{size},{seed},{skimage.__version__},{Image.__version__}".encode())
    return digest.hexdigest()[:16]


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
    return photo[top:top + height, left:left + width]


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
    image[top:top + height, left:left + width] = np.clip(patch, 0.0, 1.0)
    masks["texture"][top:top + height, left:left + width] = texture + 1

    taken: list[np.ndarray] = []
    palette = np.array(list(COLORS.values()), dtype=np.float32)
    for _ in range(1 + int(rng.random() < 0.5)):
        kind, color = int(rng.integers(len(OBJECTS))), int(rng.integers(len(COLORS)))
        side = rng.uniform(*OBJECT_SIDE) * size
        angle = rng.uniform(-np.pi / 18, np.pi / 18) if OBJECTS[kind] in ("square", "diamond") \
            else rng.uniform(0, 2 * np.pi)
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


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "interp-audit" / "concepts"


def _parse_builtin(uri: str, seed: int) -> tuple[int, int, int]:
    parts = urlsplit(uri)
    if parts.path != "concepts" or parts.scheme != "builtin":
        raise ConceptDataError(f"concepts: unknown builtin {uri!r}; the concept builtin is {BUILTIN_PREFIX}")
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise ConceptDataError(f"concepts: malformed query in {uri!r}; write {BUILTIN_PREFIX}?n=500&size=64") from None
    values = {"n": str(DEFAULT_N), "size": str(DEFAULT_SIZE), "seed": str(seed)}
    seen = set()
    for key, value in pairs:
        if key not in values:
            raise ConceptDataError(f"concepts: unknown parameter {key!r} in {uri!r}; allowed: n, size, seed")
        if key in seen:
            raise ConceptDataError(f"concepts: parameter {key!r} is given twice in {uri!r}; give it once")
        seen.add(key)
        values[key] = value
    limits = {"n": (1, MAX_N), "size": SIZE_RANGE, "seed": (0, 2**32 - 1)}
    parsed = {}
    for key, (low, high) in limits.items():
        text = values[key]
        if not text.isdigit() or not low <= int(text) <= high:
            raise ConceptDataError(f"concepts: parameter {key}={text!r} must be a whole number from {low} to {high}")
        parsed[key] = int(text)
    return parsed["n"], parsed["size"], parsed["seed"]


def builtin_concepts_dir(uri: str, seed: int = 0, cache_dir: Path | None = None) -> Path:
    """Where ``builtin:concepts?...`` is cached (written there on first use)."""
    n, size, seed = _parse_builtin(uri, seed)
    folder = Path(cache_dir or default_cache_dir()) / f"n{n}-size{size}-seed{seed}-{_generator_key(n, size, seed)}"
    if not (folder / "index.csv").is_file():
        if folder.exists():  # a folder without index.csv is no complete copy: never rename over it
            shutil.rmtree(folder, ignore_errors=True)
        write_builtin_concepts(folder, n, size, seed)
    return folder


def resolve_concepts(uri: str, base_dir: Path | None = None, seed: int = 0, cache_dir: Path | None = None,
                     filesystem=None) -> ConceptSet:
    """A ConceptSet for ``builtin:concepts?n=&size=&seed=`` (seed defaults to ``seed``) or any Broden folder."""
    if str(uri).startswith("builtin:"):
        return load_concepts(str(builtin_concepts_dir(str(uri), seed, cache_dir)))
    return load_concepts(uri, base_dir, filesystem)


def concepts_fingerprint(uri: str, base_dir: Path | None = None, seed: int = 0, filesystem=None) -> str:
    """sha256 usable as a cache key: builtins hash their parameters and generator code; folders hash the
    CSV files and every file's path and size under images/ (not the bytes: Broden holds ~1 GB of images)."""
    digest = hashlib.sha256()
    if str(uri).startswith("builtin:"):
        n, size, seed = _parse_builtin(str(uri), seed)
        digest.update(_generator_key(n, size, seed).encode())
        return digest.hexdigest()
    import pyarrow.fs as pafs

    fs, root = _locate(str(uri), base_dir, filesystem)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    for info in sorted(infos, key=lambda i: i.path):
        if info.type != pafs.FileType.File:
            continue
        relative = PurePosixPath(info.path[len(root) + 1:])
        digest.update(f"{relative}\0{info.size}\0".encode())
        if relative.suffix == ".csv" and len(relative.parts) == 1:
            digest.update(_read_bytes(fs, info.path, relative.name))
    return digest.hexdigest()
