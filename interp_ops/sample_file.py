"""A data set's model input kept on disk (a ``.npy`` file) and read a batch at a time.

A pass over 50,000 images held in memory would cost their whole size in RAM (2.4 GB at 64 px, 30 GB at 224 px);
read through a ``SampleFile`` it holds one batch. Rows are read with plain file reads, not a memory map, whose
pages would stay resident (and counted) after the pass. It indexes like the array it stands for where the audit
needs it (``len``, ``shape``, ``x[start:stop]``, ``x[[i, j]]``), so code written for arrays takes either.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from interp_ops.cache_dirs import write_atomically

BATCH_ROWS = 64  # rows per read in a pass: a batch of activations per task stays small, a read stays one call


@dataclass(frozen=True)
class SampleFile:
    """Float32 rows in the C-ordered ``.npy`` at ``path``; ``sha256`` is the rows' data, as ``blobs.array_sha256``
    hashes an array, so the file keys a task's cache exactly as the array in it would."""

    path: str
    shape: tuple[int, ...]
    sha256: str
    header_bytes: int
    dtype: str = "<f4"

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * np.dtype(self.dtype).itemsize

    def __getitem__(self, index) -> np.ndarray:
        """Rows by a slice (step 1) or by a sequence of row numbers, read from the file."""
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise IndexError("a SampleFile reads slices with step 1")
            return self._rows(start, max(start, stop))
        rows = np.asarray(index, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} rows")
        rows = np.where(rows < 0, rows + len(self), rows)
        wanted = np.unique(rows)
        read = np.concatenate([self._rows(r, r + 1) for r in wanted]) if wanted.size else self._rows(0, 0)
        return read[np.searchsorted(wanted, rows)]

    def _rows(self, start: int, stop: int) -> np.ndarray:
        count = stop - start
        with open(self.path, "rb") as stream:
            stream.seek(self.header_bytes + start * self.row_bytes)
            data = np.fromfile(
                stream, dtype=self.dtype, count=count * (self.row_bytes // np.dtype(self.dtype).itemsize)
            )
        if data.size * data.itemsize != count * self.row_bytes:
            raise OSError(f"{self.path} is truncated: rows {start}..{stop} are not all there; delete it to read again")
        return data.reshape(count, *self.shape[1:])


def row_batches(x: SampleFile | np.ndarray, rows: int = BATCH_ROWS) -> Iterator[np.ndarray]:
    """Every row of ``x`` (on disk or in memory), in order, ``rows`` at a time."""
    for start in range(0, len(x), rows):
        yield x[start : start + rows]


def write_sample_file(path: Path, chunks: Iterable[np.ndarray], rows: int) -> SampleFile:
    """``rows`` float32 rows given in ``chunks`` (arrays of one row shape) written to ``path`` as ``.npy``, one chunk
    in memory at a time; the file appears whole or not at all."""
    header: dict = {}

    def write(partial: Path) -> None:
        digest, written = hashlib.sha256(), 0
        with partial.open("wb") as stream:
            for chunk in chunks:
                chunk = np.ascontiguousarray(chunk, dtype=np.float32)
                if not header:
                    shape = (rows, *chunk.shape[1:])
                    np.lib.format.write_array_header_1_0(
                        stream, {"descr": "<f4", "fortran_order": False, "shape": shape}
                    )
                    header.update(shape=shape, header_bytes=stream.tell())
                elif chunk.shape[1:] != header["shape"][1:]:
                    raise ValueError(f"chunk rows of shape {chunk.shape[1:]} after {header['shape'][1:]}")
                digest.update(chunk.reshape(-1).view(np.uint8))
                stream.write(chunk.tobytes())
                written += len(chunk)
        if not header or written != rows:
            raise ValueError(f"{written} rows written, {rows} announced")
        header["sha256"] = digest.hexdigest()

    write_atomically(path, write)
    return SampleFile(str(path), header["shape"], header["sha256"], header["header_bytes"])


def open_sample_file(path: Path, sha256: str) -> SampleFile:
    """A ``SampleFile`` written before, from its header; its ``sha256`` is the one recorded when it was written."""
    with open(path, "rb") as stream:
        version = np.lib.format.read_magic(stream)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(stream)
        if fortran or dtype != np.dtype("<f4"):
            raise ValueError(f"{path} is not a C-ordered float32 array")
        return SampleFile(str(path), tuple(shape), sha256, stream.tell())
