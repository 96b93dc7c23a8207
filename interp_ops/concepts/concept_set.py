"""A checked concept data set (``ConceptSet``) and its batches: images and masks read lazily, batch by batch.

``broden.load_concepts`` builds a ConceptSet once a Broden folder's CSV files and file names have passed their
checks; what only the files' bytes show is checked here, when they are read: ``check_mask_headers`` reads the
first bytes of every mask (a PNG of its row's size?), for a fraction of the cost of decoding; the label ids inside
a mask are checked when it is decoded, by ``batches`` or at once by ``verify``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from interp_ops.concepts.decode import (
    PNG_CHUNK,
    PNG_HEAD,
    PNG_SIGNATURE,
    as_rgb,
    decode_mask,
    open_image,
    resize_nearest,
)

MAX_MASK_LABEL = 255 + 256 * 255  # R + 256*G
LISTED_LABELS = 40  # how many label names an error about an unknown one lists
REMOTE_READS_IN_FLIGHT = 16  # mask headers read at once from object stores, where each read is a round trip


class ConceptDataError(ValueError):
    """Bad concept data; the message names the file (and row or column) and the fix."""


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
class IndexRow:
    """One image of index.csv, as listed and checked."""

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

    def __init__(
        self,
        filesystem,
        root: str,
        rows: list[IndexRow],
        labels: dict[int, str],
        label_category: dict[int, str],
        categories: dict[str, str],
        source: str,
    ):
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
        return ConceptSet(
            self._fs, self._root, self._rows[:n], self.labels, self.label_category, self.categories, self.source
        )

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

    def known_label_ids(self, name: str) -> list[int]:
        """The ids of the label called ``name`` (one, unless a data set lists it twice); a name that is no label is a
        ConceptDataError listing (some of) the labels."""
        ids = [label for label, label_name in self.labels.items() if label_name == name]
        if not ids:
            known = sorted(set(self.labels.values()))
            more = f" and {len(known) - LISTED_LABELS} more" if len(known) > LISTED_LABELS else ""
            raise ConceptDataError(
                f"no concept named {name!r} in the concept set; its concepts are: "
                f"{', '.join(known[:LISTED_LABELS])}{more}"
            )
        return ids

    def images_with(self, names: list[str], count: int, batch_size: int = 256) -> dict[str, list[int]]:
        """For each label name, the positions of the first ``count`` images where the label is present (any pixel
        of its masks, or an image-level label): read from the masks only, stopping once every name has ``count``
        (fewer where the set holds fewer). A name that is no label is a ConceptDataError listing the labels."""
        ids = {name: self.known_label_ids(name) for name in names}
        found: dict[str, list[int]] = {name: [] for name in names}
        for batch in self.batches(batch_size, images=False):
            for name in names:
                present = self.present(batch, ids[name])
                found[name] += batch.indices[present][: count - len(found[name])].tolist()
            if all(len(positions) >= count for positions in found.values()):
                break
        return found

    def present(self, batch: ConceptBatch, label_ids: list[int]) -> np.ndarray:
        """Whether each image holds one of ``label_ids`` in any category (a label may be listed in several)."""
        present = np.zeros(len(batch), dtype=bool)
        for labels in batch.pixel_labels.values():
            present |= np.isin(labels, label_ids).any(axis=(1, 2, 3))
        for per_image in batch.image_labels.values():
            present |= np.array([not set(label_ids).isdisjoint(labels) for labels in per_image])
        return present

    def images_at(self, positions: list[int]) -> np.ndarray:
        """float32 (N, H, W, 3) in [0, 1]: the images at ``positions`` (index.csv order), without their masks."""
        return np.stack([self._read_image(self._rows[position]) for position in positions])

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

        masks = [
            (row, category, entry)
            for row in self._rows
            for category, entries in row.entries.items()
            for entry in entries
            if isinstance(entry, str)
        ]

        def head(mask: tuple[IndexRow, str, str]) -> bytes:
            row, category, relative = mask
            return read_head(self._fs, self._path(relative), _mask_where(relative, row, category), PNG_HEAD)

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

    def _read_image(self, row: IndexRow) -> np.ndarray:
        data = read_bytes(self._fs, self._path(row.image), f"image {row.image!r} (index.csv row {row.number})")
        try:
            with open_image(data) as opened:
                image = as_rgb(opened)
        except Exception as error:  # PIL raises many types for undecodable files
            raise ConceptDataError(
                f"concepts: image {row.image!r} (index.csv row {row.number}) cannot be decoded "
                f"({type(error).__name__}: {error}); replace it with a PNG or JPEG"
            ) from None
        if image.shape[:2] != self.image_size:
            from skimage.transform import resize

            image = resize(image, self.image_size, order=1, anti_aliasing=True).astype(np.float32)
        return image

    def _read_layers(self, rows: list[IndexRow], category: str) -> np.ndarray:
        depth = max(1, max(len(row.entries.get(category, ())) for row in rows))
        out = np.zeros((len(rows), depth, *self.mask_size), dtype=np.int32)
        for b, row in enumerate(rows):
            for k, entry in enumerate(row.entries.get(category, ())):
                out[b, k] = entry if isinstance(entry, int) else self._read_mask(row, category, entry)
        return out

    def _read_mask(self, row: IndexRow, category: str, relative: str) -> np.ndarray:
        where = _mask_where(relative, row, category)
        data = read_bytes(self._fs, self._path(relative), where)
        if not data.startswith(PNG_SIGNATURE):
            raise ConceptDataError(_not_png(where))
        try:
            with open_image(data) as opened:
                labels = decode_mask(opened)
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
            labels = resize_nearest(labels, self.mask_size)
        return labels


def _mask_where(relative: str, row: IndexRow, category: str) -> str:
    return f"mask {relative!r} (index.csv row {row.number}, category {category!r})"


def _not_png(where: str) -> str:
    return (
        f"concepts: {where} is not a PNG file; Broden masks are PNGs whose pixels encode label = R + 256*G: "
        "convert it to PNG or remove it from index.csv"
    )


def _wrong_size(where: str, shape: tuple[int, int], row: IndexRow) -> str:
    return (
        f"concepts: {where} is {shape[0]}x{shape[1]} pixels but the row gives sh={row.mask_size[0]}, "
        f"sw={row.mask_size[1]}; fix sh/sw or the mask"
    )


def _check_mask_header(head: bytes, row: IndexRow, where: str) -> None:
    """A PNG starts with its signature and the IHDR chunk, which gives its width and height."""
    if len(head) < PNG_HEAD or not head.startswith(PNG_SIGNATURE):
        raise ConceptDataError(_not_png(where))
    _, kind = PNG_CHUNK.unpack_from(head, len(PNG_SIGNATURE))
    if kind != b"IHDR":
        raise ConceptDataError(f"concepts: {where} is a damaged PNG (no IHDR chunk first); write the mask again")
    width, height = struct.unpack_from(">II", head, len(PNG_SIGNATURE) + PNG_CHUNK.size)
    if (height, width) != row.mask_size:
        raise ConceptDataError(_wrong_size(where, (height, width), row))


def read_bytes(filesystem, path: str, what: str) -> bytes:
    return read_head(filesystem, path, what, None)


def read_head(filesystem, path: str, what: str, size: int | None) -> bytes:
    """The first ``size`` bytes of a file (all of it for None)."""
    try:
        with filesystem.open_input_file(path) as stream:
            return stream.read(size)
    except (FileNotFoundError, OSError) as error:
        raise ConceptDataError(f"concepts: cannot read {what} at {path}: {error}") from None
