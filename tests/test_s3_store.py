"""The report store, its blobs and the tasks' results on S3: an S3-compatible server (moto in server mode) on
127.0.0.1, started here, talked to over HTTP by pyarrow's S3 filesystem, s3fs and boto3 as a cluster's would be."""

import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest
from conftest import CREDENTIALS, s3_keys
from test_store import run_tables

from interp_audit import report
from interp_audit.blobs import BlobError, put_array, put_blob
from interp_audit.errors import SpecError
from interp_audit.store import ReportStore
from interp_audit.store_manifest import BLOBS, MANIFESTS, RESULTS, STAGING

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_a_run_published_to_s3_reads_back_through_the_store_duckdb_and_plain_pyarrow(s3, s3_endpoint):
    client, bucket, uri = s3
    store = ReportStore.open(uri)
    store.check_usable()
    run_id = str(uuid.uuid4())
    store.stage(run_id, "m", "1", run_tables(run_id))
    assert report.list_runs(uri).empty  # staged is invisible
    store.publish(run_id, "m", "1")

    assert list(report.list_runs(uri).run_id) == [run_id]
    assert report.load_table(uri, "onnx_parity", model="m").max_abs_diff.tolist() == [1e-7]
    assert report.query(uri, "SELECT count(*) AS n FROM onnx_parity").column("n").to_pylist() == [1]
    files = [key for key in s3_keys(client, bucket) if key.endswith((".parquet", ".json"))]
    assert files == [
        f"reports/{MANIFESTS}/{run_id}.json",
        f"reports/audit_runs/model=m/version=1/{run_id}.parquet",
        f"reports/onnx_parity/model=m/version=1/{run_id}.parquet",
    ]
    assert [key for key in s3_keys(client, bucket) if key.startswith(f"reports/{STAGING}/")] == [f"reports/{STAGING}/"]
    # plain Parquet in a hive layout: readable without our code
    plain_s3 = pafs.S3FileSystem(endpoint_override=s3_endpoint)
    raw = ds.dataset(f"{bucket}/reports/onnx_parity", filesystem=plain_s3, partitioning="hive").to_table()
    assert raw.column("run_id").to_pylist() == [run_id] and raw.column("model").to_pylist() == ["m"]
    assert store.check().intact and len(store.tables_sha256(run_id)) == 64


def test_a_store_in_a_missing_bucket_is_refused_before_any_work(s3, s3_endpoint):
    client, bucket, _ = s3
    missing = f"s3://{bucket}-missing/reports?endpoint_override={s3_endpoint}"
    with pytest.raises(SpecError, match=f"bucket '{bucket}-missing' does not exist") as error:
        ReportStore.open(missing).check_usable()
    assert error.value.exit_code == 2


CRASHING_PUBLISH = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from test_store import run_tables
    from interp_audit.store import MANIFESTS, STAGING, ReportStore

    uri, run_id, crash = sys.argv[1:]
    def die(*_):
        os.kill(os.getpid(), signal.SIGKILL)
    if crash == "between-tables":  # killed as it is about to move the second table into place
        path, destinations = ReportStore._path, []
        def watched(self, *parts):
            if parts[-1].endswith(".parquet") and not parts[0].startswith((STAGING, MANIFESTS)):
                destinations.append(parts)
                if len(destinations) == 2:
                    die()
            return path(self, *parts)
        ReportStore._path = watched
    else:  # every table moved, killed before the manifest is written
        ReportStore._write_manifest = die
    store = ReportStore.open(uri)
    store.stage(run_id, "m", "2", run_tables(run_id, version="2"))
    store.publish(run_id, "m", "2")
    """
)


@pytest.mark.parametrize("crash", ["between-tables", "before-manifest"])
def test_a_publish_killed_midway_leaves_nothing_visible(s3, crash):
    client, bucket, uri = s3
    store = ReportStore.open(uri)
    published = str(uuid.uuid4())
    store.stage(published, "m", "1", run_tables(published))
    store.publish(published, "m", "1")

    crashed = str(uuid.uuid4())
    script = CRASHING_PUBLISH.format(tests=str(ROOT / "tests"))
    process = subprocess.run([sys.executable, "-c", script, uri, crashed, crash], capture_output=True, timeout=300)
    assert process.returncode == -signal.SIGKILL, process.stderr.decode()[-2000:]
    staged = [key for key in s3_keys(client, bucket) if key.startswith(f"reports/{STAGING}/{crashed}/")]
    in_place = [key for key in s3_keys(client, bucket) if key.endswith(f"version=2/{crashed}.parquet")]
    in_place = [key for key in in_place if key not in staged]
    if crash == "between-tables":  # the crash came where it was meant to: one table in place, audit_runs staged
        assert in_place == [f"reports/onnx_parity/model=m/version=2/{crashed}.parquet"]
        assert [key for key in staged if key.endswith(".parquet")] == [
            f"reports/{STAGING}/{crashed}/audit_runs/model=m/version=2/{crashed}.parquet"
        ]
    else:
        assert len(in_place) == 2 and f"reports/{MANIFESTS}/{crashed}.json" not in s3_keys(client, bucket)

    assert list(report.list_runs(uri).run_id) == [published]
    assert report.load_table(uri, "onnx_parity").run_id.tolist() == [published]
    assert report.query(uri, "SELECT count(*) AS n FROM audit_runs").column("n").to_pylist() == [1]
    if crash == "between-tables":  # the debris is gc's to remove, and the store is whole again
        removed = ReportStore.open(uri).gc(grace_seconds=0)
        assert sorted(removed) == [f"{STAGING}/{crashed}", f"onnx_parity/model=m/version=2/{crashed}.parquet"]
        assert ReportStore.open(uri).check().intact
        assert list(report.list_runs(uri).run_id) == [published]


def test_blobs_round_trip_through_s3_once_each_and_verified(s3):
    client, bucket, uri = s3
    onnx = os.urandom(3 << 20)  # larger than one part of a multipart upload
    ref = put_blob(uri, onnx)
    assert [key for key in s3_keys(client, bucket) if not key.endswith("/")] == [f"reports/{BLOBS}/{ref.sha256}"]
    written = client.head_object(Bucket=bucket, Key=f"reports/{BLOBS}/{ref.sha256}")["ETag"]
    assert put_blob(uri, onnx) == ref
    assert client.head_object(Bucket=bucket, Key=f"reports/{BLOBS}/{ref.sha256}")["ETag"] == written
    assert ref.read() == onnx

    x = np.random.default_rng(0).random((16, 3, 8, 8), dtype=np.float32)
    np.testing.assert_array_equal(put_array(uri, x).read(), x)

    corrupt = put_blob(uri, os.urandom(1024))
    flipped = bytearray(client.get_object(Bucket=bucket, Key=f"reports/{BLOBS}/{corrupt.sha256}")["Body"].read())
    flipped[0] ^= 1
    client.put_object(Bucket=bucket, Key=f"reports/{BLOBS}/{corrupt.sha256}", Body=bytes(flipped))
    with pytest.raises(BlobError, match=f"blob {corrupt.sha256} in store s3://{bucket}/reports.* is corrupt"):
        corrupt.read()


def test_the_endpoint_may_come_from_the_environment(s3, s3_endpoint, monkeypatch, prefect_server):
    from prefect.filesystems import RemoteFileSystem

    from flows.result_storage import task_result_storage

    client, bucket, _ = s3
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    uri = f"s3://{bucket}/reports"
    run_id = str(uuid.uuid4())
    store = ReportStore.open(uri)
    store.stage(run_id, "m", "1", run_tables(run_id))
    store.publish(run_id, "m", "1")
    assert list(report.list_runs(uri).run_id) == [run_id]
    data = os.urandom(2048)
    assert put_blob(uri, data).read() == data
    results = RemoteFileSystem.load(task_result_storage(uri).split("/", 1)[1])
    assert results.settings == {}  # s3fs finds the endpoint in the environment too
    results.write_path("probe", b"results")
    assert client.get_object(Bucket=bucket, Key=f"reports/{RESULTS}/probe")["Body"].read() == b"results"


# ------------------------------------------------------------------------------------------- task results


def test_task_results_persist_to_the_s3_store_and_serve_a_rerun(s3, prefect_server):
    from prefect import flow, task

    from flows.result_storage import task_result_storage
    from tasks import cached

    client, bucket, uri = s3
    runs = []

    @task(**cached())
    def square(value: int) -> int:
        runs.append(value)
        return value * value

    @flow
    def squares(values: list[int]) -> list[int]:
        return [future.result() for future in square.map(values)]

    on_s3 = squares.with_options(result_storage=task_result_storage(uri), persist_result=False)
    assert on_s3([2, 3]) == [4, 9] and sorted(runs) == [2, 3]
    results = [key for key in s3_keys(client, bucket) if key.startswith(f"reports/{RESULTS}/")]
    assert len(results) == 2
    assert on_s3([2, 3]) == [4, 9] and sorted(runs) == [2, 3]  # both served from the records on S3
    client.delete_object(Bucket=bucket, Key=results[0])
    assert on_s3([2, 3]) == [4, 9] and len(runs) == 3  # the one whose record is gone runs again


def test_tasks_on_ray_workers_persist_to_the_s3_store_and_a_new_cluster_reuses_them(s3, s3_endpoint, prefect_server):
    """prefect-ray ships the flow run's context, its result storage included, with each task: results computed in
    Ray's worker processes land on the report store, and a re-run on a fresh Ray instance is served from there."""
    pytest.importorskip("ray")
    from prefect import flow, task
    from prefect.settings import get_current_settings
    from prefect_ray import RayTaskRunner

    from flows.result_storage import task_result_storage
    from tasks import cached

    client, bucket, uri = s3

    @task(**cached())
    def computed_by(value: int) -> tuple[int, int]:
        return value, os.getpid()

    @flow
    def fan_out(values: list[int]) -> list[tuple[int, int]]:
        return [future.result() for future in computed_by.map(values)]

    def on_a_new_ray_instance():
        worker_env = {"PREFECT_API_URL": get_current_settings().api.url, **CREDENTIALS}  # what a cluster's workers need
        runner = RayTaskRunner(
            init_kwargs={
                "address": "local",  # a Ray of its own: without an address ray.init joins one running here
                "num_cpus": 2,
                "include_dashboard": False,
                "runtime_env": {"env_vars": worker_env},
            }
        )
        storage = task_result_storage(uri)
        return fan_out.with_options(task_runner=runner, result_storage=storage, persist_result=False)([1, 2])

    first = on_a_new_ray_instance()
    assert [value for value, _ in first] == [1, 2] and os.getpid() not in {pid for _, pid in first}
    assert len([key for key in s3_keys(client, bucket) if key.startswith(f"reports/{RESULTS}/")]) == 2
    assert on_a_new_ray_instance() == first  # the first run's workers' results, read back from S3
