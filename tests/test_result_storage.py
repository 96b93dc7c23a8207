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


@pytest.mark.slow
def test_a_flow_given_a_local_store_persists_its_tasks_results_there(tmp_path, prefect_server):
    from prefect import flow, task

    from tasks import cached

    runs = []

    @task(**cached())
    def double(value: int) -> int:
        runs.append(value)
        return 2 * value

    @flow
    def doubles(values: list[int]) -> list[int]:
        return [future.result() for future in double.map(values)]

    in_store = doubles.with_options(result_storage=task_result_storage(tmp_path / "reports"), persist_result=False)
    assert in_store([1, 2]) == [2, 4] and in_store([1, 2]) == [2, 4] and sorted(runs) == [1, 2]
    assert len(list((tmp_path / "reports" / RESULTS).iterdir())) == 2
