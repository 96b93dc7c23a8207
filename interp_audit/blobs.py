"""Content-addressed blobs on the report store: big task inputs written once, read by reference.

A task submitted to a cluster is pickled with its parameters; the ONNX bytes and the sample array would travel
with every one of them. ``put_blob`` writes such bytes once to ``<store>/_blobs/<sha256>`` (where every worker
that can reach the store can read them) and returns a ``BlobRef`` of a few hundred bytes; ``BlobRef.read``
returns the bytes, checked against their sha256, and keeps them for the rest of the process, so a worker reads
each blob once however many tasks it runs. Arrays travel as ``.npy`` blobs (never pickled) behind an ``ArrayRef``.

Refs are keyed by content (``interp_audit.cache_keys``): a ``BlobRef`` as the bytes it names, an ``ArrayRef``
as the array, so handing a task a ref instead of the value changes no cache key.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs

from interp_audit.errors import AuditError
from interp_audit.inputs import ModelInputs
from interp_audit.store import ReportStore
from interp_audit.store_manifest import BLOBS, STAGING

BLOBS_KEPT_PER_PROCESS = 8  # an audit reads a handful (its ONNX, its baseline's, its samples): room for two
REFRESH_AFTER_SECONDS = 300  # a blob put again after this long gets a new mtime: `store gc` keeps what runs still use


class BlobError(AuditError):
    """A blob is missing from its store or its bytes are not the ones its ref names."""


@dataclasses.dataclass(frozen=True)
class BlobRef:
    """Bytes stored once on a report store: where (the store's URI) and what (their sha256 and size)."""

    store: str
    sha256: str
    size: int

    @property
    def path(self) -> str:
        """The blob's path relative to the store's root."""
        return f"{BLOBS}/{self.sha256}"

    def read(self) -> bytes:
        """The blob's bytes, verified; the first read in a process fetches them, later ones are served from memory."""
        return _read_verified(self)


@dataclasses.dataclass(frozen=True)
class ArrayRef:
    """A numpy array stored as a ``.npy`` blob; ``dtype``, ``shape`` and ``sha256`` (of the array's data in C order)
    are the array's cache-key content, so a ref keys exactly as the array it stands for."""

    blob: BlobRef
    dtype: str
    shape: tuple[int, ...]
    sha256: str

    def read(self) -> np.ndarray:
        return np.load(io.BytesIO(self.blob.read()), allow_pickle=False)


def put_blob(store_uri: str | Path, data: bytes) -> BlobRef:
    """Store ``data`` under its sha256 unless the store holds it already; safe to call from many processes at once.

    The bytes are written to a staging folder of their own and moved into ``_blobs/`` in one step (a rename on a
    local store, an object copy on S3), so a reader never sees a partial blob; two writers of the same blob move
    the same bytes. A crashed write leaves only a staging folder, which ``ReportStore.gc`` removes. A blob held
    already is written again when older than ``REFRESH_AFTER_SECONDS``: its mtime says when a run last put it, and
    ``ReportStore.gc`` removes only blobs that no run has put for its grace period."""
    store = ReportStore.open(store_uri)
    # a local store by its absolute path: a worker reading the ref runs in another working folder
    location = store.root if isinstance(store.filesystem, pafs.LocalFileSystem) else store.uri
    ref = BlobRef(location, hashlib.sha256(data).hexdigest(), len(data))
    target = f"{store.root}/{ref.path}"
    existing = store.filesystem.get_file_info(target)
    if existing.type == pafs.FileType.File and existing.size == ref.size and not _stale(existing):
        return ref
    staging = f"{store.root}/{STAGING}/{uuid.uuid4()}"
    store.filesystem.create_dir(staging, recursive=True)
    with store.filesystem.open_output_stream(f"{staging}/blob") as stream:
        stream.write(data)
    store.filesystem.create_dir(f"{store.root}/{BLOBS}", recursive=True)
    store.filesystem.move(f"{staging}/blob", target)
    store.filesystem.delete_dir(staging)
    return ref


def _stale(info: pafs.FileInfo) -> bool:
    return info.mtime is None or time.time() - info.mtime.timestamp() > REFRESH_AFTER_SECONDS


def put_array(store_uri: str | Path, array: np.ndarray) -> ArrayRef:
    """Store ``array`` as ``.npy`` bytes; arrays of Python objects are refused (they would need a pickle)."""
    if array.dtype.hasobject:
        raise TypeError(f"an array of dtype {array.dtype} holds Python objects; only plain numeric arrays are stored")
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return ArrayRef(put_blob(store_uri, buffer.getvalue()), array.dtype.str, tuple(array.shape), array_sha256(array))


def array_sha256(value: np.ndarray) -> str:
    """sha256 of a plain array's data in C order, whatever its strides (its dtype and shape are keyed apart)."""
    return hashlib.sha256(np.ascontiguousarray(value).reshape(-1).view(np.uint8)).hexdigest()


def materialized_inputs(inputs: ModelInputs) -> ModelInputs:
    """``inputs`` with their samples in memory, whether ``x`` came as an array or as an ``ArrayRef``."""
    return dataclasses.replace(inputs, x=materialized(inputs.x))


def materialized(value):
    """A ref's content (bytes or array), any other value as it is: a task's parameter may come by value (on the
    thread runner) or by ref (on a cluster), and its cache key is the same either way."""
    return value.read() if isinstance(value, (BlobRef, ArrayRef)) else value


@functools.lru_cache(maxsize=BLOBS_KEPT_PER_PROCESS)
def _read_verified(ref: BlobRef) -> bytes:
    store = ReportStore.open(ref.store)
    try:
        with store.filesystem.open_input_stream(f"{store.root}/{ref.path}") as stream:
            data = stream.read()
    except OSError as exc:
        raise BlobError(
            f"blob {ref.sha256} is not readable in store {ref.store}: {' '.join(str(exc).split())}; run the audit "
            "again (it writes its blobs anew), with this store reachable from every worker and `interp-audit store "
            "gc --grace` longer than an audit takes"
        ) from None
    found = hashlib.sha256(data).hexdigest()
    if found != ref.sha256 or len(data) != ref.size:
        raise BlobError(
            f"blob {ref.sha256} in store {ref.store} is corrupt: {len(data)} bytes with sha256 {found}, expected "
            f"{ref.size} bytes; delete {ref.path} from the store and run the audit again to write it anew"
        )
    return data
