"""Where task results persist for a report store (flows.result_storage); S3 end to end is in test_s3_store."""

from pathlib import Path

import pytest

from flows.result_storage import fsspec_settings, task_result_storage
from interp_audit.store_manifest import RESULTS


def test_a_local_store_keeps_results_in_its_own_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert task_result_storage("reports") == tmp_path / "reports" / RESULTS  # absolute: workers have other cwds
    assert task_result_storage(f"file://{tmp_path}/shared") == Path(tmp_path, "shared", RESULTS)


@pytest.mark.parametrize(
    ("uri", "settings"),
    [
        ("s3://bucket/reports", {}),
        ("s3://bucket/reports?endpoint_override=127.0.0.1:9000&scheme=http", {"endpoint_url": "http://127.0.0.1:9000"}),
        ("s3://bucket/reports?endpoint_override=minio.lan:9000", {"endpoint_url": "https://minio.lan:9000"}),
        (
            "s3://bucket/reports?endpoint_override=http://127.0.0.1:9000&region=eu-west-1",
            {"endpoint_url": "http://127.0.0.1:9000", "client_kwargs": {"region_name": "eu-west-1"}},
        ),
        ("gs://bucket/reports", {}),
    ],
)
def test_an_s3_uri_names_its_endpoint_to_s3fs_as_to_pyarrow(uri, settings):
    assert fsspec_settings(uri) == settings
