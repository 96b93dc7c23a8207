"""Content-addressed blobs on the report store: written once, read by reference, verified, keyed as their content."""

import dataclasses
import hashlib
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pytest

from interp_audit.blobs import ArrayRef, BlobError, BlobRef, materialized, put_array, put_blob
from interp_audit.cache_keys import content_key
from interp_audit.inputs import ModelInputs
from interp_audit.store import ReportStore
from interp_audit.store_manifest import BLOBS, STAGING


def unique_bytes(size: int = 4096) -> bytes:
    """Bytes no other test writes: the per-process cache never holds them before the test reads them."""
    return os.urandom(size)


def test_bytes_round_trip_through_the_store(tmp_path):
    data = unique_bytes()
    ref = put_blob(str(tmp_path), data)
    assert (ref.size, len(ref.sha256)) == (len(data), 64)
    assert (tmp_path / BLOBS / ref.sha256).read_bytes() == data
    assert ref.read() == data
    assert not any((tmp_path / STAGING).iterdir())  # the staging folder of the write is gone


def test_arrays_round_trip_without_pickles(tmp_path):
    array = np.asfortranarray(np.random.default_rng(0).random((3, 4, 5), dtype=np.float32))
    ref = put_array(str(tmp_path), array)
    back = ref.read()
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    assert np.load(tmp_path / BLOBS / ref.blob.sha256, allow_pickle=False).shape == (3, 4, 5)  # a plain .npy
    with pytest.raises(TypeError, match="holds Python objects"):
        put_array(str(tmp_path), np.array([{"a": 1}, None], dtype=object))


def test_a_ref_names_a_local_store_by_its_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = unique_bytes()
    ref = put_blob("reports", data)
    assert ref.store == str(tmp_path / "reports")
    monkeypatch.chdir(tmp_path.parent)  # a worker elsewhere
    assert ref.read() == data


def test_a_task_takes_a_value_or_its_ref_alike(tmp_path):
    data, array = unique_bytes(), np.arange(6.0).reshape(2, 3)
    assert materialized(put_blob(str(tmp_path), data)) == data and materialized(data) is data
    np.testing.assert_array_equal(materialized(put_array(str(tmp_path), array)), array)
    assert materialized(array) is array and materialized("features.4") == "features.4"


def test_a_second_put_of_the_same_bytes_writes_nothing(tmp_path):
    data = unique_bytes()
    first = put_blob(str(tmp_path), data)
    path = tmp_path / BLOBS / first.sha256
    before = path.stat()
    assert put_blob(str(tmp_path), data) == first
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not replaced, not rewritten
    assert sorted(p.name for p in (tmp_path / BLOBS).iterdir()) == [first.sha256]


def test_a_worker_reads_each_blob_once(tmp_path):
    data = unique_bytes()
    ref = put_blob(str(tmp_path), data)
    assert ref.read() == data
    (tmp_path / BLOBS / ref.sha256).unlink()
    assert ref.read() == data  # served from this process's memory
    moved = dataclasses.replace(ref, store=str(tmp_path / "elsewhere"))
    with pytest.raises(BlobError, match=f"blob {ref.sha256} is not readable in store .*elsewhere"):
        moved.read()


def test_corrupt_bytes_are_refused_naming_the_blob_and_the_store(tmp_path):
    data = unique_bytes()
    ref = put_blob(str(tmp_path), data)
    path = tmp_path / BLOBS / ref.sha256
    path.write_bytes(bytes([data[0] ^ 1]) + data[1:])  # same size, one bit flipped
    with pytest.raises(BlobError, match=f"blob {ref.sha256} in store {tmp_path} is corrupt") as error:
        ref.read()
    assert f"delete {BLOBS}/{ref.sha256}" in str(error.value)
    truncated = BlobRef(str(tmp_path), ref.sha256, ref.size + 1)
    path.write_bytes(data)
    with pytest.raises(BlobError, match="is corrupt: 4096 bytes"):
        truncated.read()


_BARRIER = None  # in a worker process of the concurrency test: the barrier all its workers wait at


def _keep_barrier(barrier) -> None:
    global _BARRIER
    _BARRIER = barrier


def _put_after_barrier(store: str, data: bytes) -> BlobRef:
    _BARRIER.wait(timeout=120)
    return put_blob(store, data)


def test_concurrent_puts_of_one_blob_leave_one_intact_file(tmp_path):
    data = unique_bytes(1 << 20)
    threads = 8
    barrier = threading.Barrier(threads)

    def put(_):
        barrier.wait(timeout=60)
        return put_blob(str(tmp_path / "threads"), data)

    with ThreadPoolExecutor(threads) as pool:
        refs = set(pool.map(put, range(threads)))
    spawn = multiprocessing.get_context("spawn")
    processes = 3
    with ProcessPoolExecutor(
        processes, mp_context=spawn, initializer=_keep_barrier, initargs=(spawn.Barrier(processes),)
    ) as pool:
        refs |= set(pool.map(_put_after_barrier, [str(tmp_path / "processes")] * processes, [data] * processes))
    assert {(ref.sha256, ref.size) for ref in refs} == {(hashlib.sha256(data).hexdigest(), len(data))}
    for store in ("threads", "processes"):
        blobs = list((tmp_path / store / BLOBS).iterdir())
        assert len(blobs) == 1 and blobs[0].read_bytes() == data
        assert not any((tmp_path / store / STAGING).iterdir())
        assert ReportStore.open(tmp_path / store).check().intact


def test_a_ref_keys_as_the_content_it_stands_for(tmp_path):
    onnx = unique_bytes()
    x = np.random.default_rng(1).random((4, 3, 8, 8), dtype=np.float32)[:, :, ::2]  # strided, not contiguous
    inputs = ModelInputs(ids=["a", "b", "c", "d"], x=x, labels=np.arange(4), class_names=None)
    by_value = {"onnx_bytes": onnx, "x": x, "inputs": inputs, "seed": 0}
    by_ref = {
        "onnx_bytes": put_blob(str(tmp_path), onnx),
        "x": put_array(str(tmp_path), x),
        "inputs": dataclasses.replace(inputs, x=put_array(str(tmp_path / "another-store"), x)),
        "seed": 0,
    }
    assert isinstance(by_ref["x"], ArrayRef)
    assert content_key(by_ref) == content_key(by_value)
    other = x.copy()
    other[0, 0, 0, 0] += 1
    assert content_key(by_ref | {"x": put_array(str(tmp_path), other)}) != content_key(by_value)
    assert content_key(by_ref | {"onnx_bytes": put_blob(str(tmp_path), onnx + b"!")}) != content_key(by_value)


def test_gc_removes_blobs_no_run_has_put_for_the_grace_period(tmp_path):
    store = ReportStore.open(tmp_path)
    kept, idle, data = put_blob(str(tmp_path), unique_bytes()), put_blob(str(tmp_path), unique_bytes()), unique_bytes()
    used_again = put_blob(str(tmp_path), data)
    two_hours_ago = time.time() - 7200
    for ref in (idle, used_again):
        os.utime(tmp_path / BLOBS / ref.sha256, (two_hours_ago, two_hours_ago))
    assert put_blob(str(tmp_path), data) == used_again  # a run puts it again: its mtime is now
    crashed_put = tmp_path / STAGING / "0c8f4a4e-6c1e-4a55-9a3b-1b4d5a0e6f70"
    crashed_put.mkdir(parents=True)
    (crashed_put / "blob").write_bytes(b"partial")
    for path in (crashed_put / "blob", crashed_put):
        os.utime(path, (two_hours_ago, two_hours_ago))
    found = store.check()
    assert found.intact and found.foreign == []  # blobs are neither tables nor foreign files

    assert store.gc(grace_seconds=3600) == [f"{STAGING}/0c8f4a4e-6c1e-4a55-9a3b-1b4d5a0e6f70", idle.path]
    assert sorted(p.name for p in (tmp_path / BLOBS).iterdir()) == sorted([kept.sha256, used_again.sha256])
    assert (tmp_path / BLOBS / used_again.sha256).read_bytes() == data
    assert store.gc(grace_seconds=3600) == []
    assert sorted(store.gc(grace_seconds=0)) == sorted([kept.path, used_again.path])
