"""The report store: atomic publication, hive layout, readers that only see published runs."""

import datetime as dt
import json

import pyarrow.parquet as pq
import pytest

from data_contracts import conform
from interp_audit import report
from interp_audit.store import ReportStore


def run_tables(run_id, version="1", status="passed"):
    now = dt.datetime(2026, 11, 25, tzinfo=dt.UTC)
    runs = [
        {
            "run_id": run_id,
            "audit_name": "a",
            "model_name": "m",
            "model_version": version,
            "model_source": "torch",
            "weights_sha256": "0" * 64,
            "onnx_sha256": "1" * 64,
            "spec_sha256": "2" * 64,
            "spec_text": "name: a",
            "seed": 0,
            "data_uri": "builtin:shapes",
            "num_samples": 2,
            "started_at": now,
            "finished_at": now,
            "status": status,
            "device": "cpu",
            "ort_providers": ["CPUExecutionProvider"],
            "package_versions": json.dumps({"torch": "2.13.0"}),
        }
    ]
    parity = [
        {
            "run_id": run_id,
            "output": "logits",
            "shape": [3],
            "max_abs_diff": 1e-7,
            "max_rel_diff": 1e-7,
            "argmax_agreement": 1.0,
        }
    ]
    return {"onnx_parity": conform("onnx_parity", parity), "audit_runs": conform("audit_runs", runs)}


def test_publish_makes_a_run_visible_with_hive_layout(tmp_path):
    store = ReportStore.open(tmp_path)
    store.stage("r1", "m", "1", run_tables("r1"))
    assert report.list_runs(tmp_path).empty  # staged is invisible
    store.publish("r1", "m", "1")
    assert (tmp_path / "onnx_parity" / "model=m" / "version=1" / "r1.parquet").is_file()
    assert not (tmp_path / "_staging" / "r1").exists()
    assert list(report.list_runs(tmp_path).run_id) == ["r1"]
    parity = report.load_table(tmp_path, "onnx_parity", model="m", version="1")
    assert list(parity.columns[:2]) == ["run_id", "output"] and parity.version.tolist() == ["1"]
    # the files are plain Parquet, readable without our code
    raw = pq.read_table(tmp_path / "onnx_parity" / "model=m" / "version=1" / "r1.parquet")
    assert raw.column("max_abs_diff").to_pylist() == [1e-7]


def test_a_crash_between_moves_leaves_nothing_visible(tmp_path):
    store = ReportStore.open(tmp_path)
    store.stage("r1", "m", "1", run_tables("r1"))
    store.publish("r1", "m", "1")
    store.stage("r2", "m", "2", run_tables("r2", version="2"))
    # simulate a crash after the data tables moved but before audit_runs did
    target = tmp_path / "onnx_parity" / "model=m" / "version=2"
    target.mkdir(parents=True)
    (tmp_path / "_staging" / "r2" / "onnx_parity" / "model=m" / "version=2" / "r2.parquet").rename(
        target / "r2.parquet"
    )
    assert list(report.list_runs(tmp_path).run_id) == ["r1"]
    assert report.load_table(tmp_path, "onnx_parity").run_id.tolist() == ["r1"]
    assert report.query(tmp_path, "SELECT count(*) AS n FROM onnx_parity").column("n").to_pylist() == [1]


def test_versions_stay_strings_and_filter(tmp_path):
    store = ReportStore.open(tmp_path)
    for run_id, version in (("a", "1"), ("b", "10"), ("c", "1.0")):
        store.stage(run_id, "m", version, run_tables(run_id, version))
        store.publish(run_id, "m", version)
    assert sorted(report.list_runs(tmp_path).version) == ["1", "1.0", "10"]
    assert report.load_table(tmp_path, "onnx_parity", version="1").run_id.tolist() == ["a"]
    sql = "SELECT version, count(*) AS n FROM audit_runs GROUP BY version ORDER BY version"
    assert report.query(tmp_path, sql).to_pylist() == [
        {"version": "1", "n": 1},
        {"version": "1.0", "n": 1},
        {"version": "10", "n": 1},
    ]


def test_unknown_run_and_table_are_named(tmp_path):
    with pytest.raises(KeyError, match="no run with id 'zz'"):
        report.find_run(tmp_path, "zz")
    with pytest.raises(KeyError, match="unknown table 'nope'"):
        report.load_table(tmp_path, "nope")


def test_filesystem_uri(tmp_path):
    uri = f"file://{tmp_path}"
    store = ReportStore.open(uri)
    store.stage("r1", "m", "1", run_tables("r1"))
    store.publish("r1", "m", "1")
    assert list(report.list_runs(uri).run_id) == ["r1"]


def test_bad_sql_names_the_tables(tmp_path):
    from interp_audit.errors import QueryError

    store = ReportStore.open(tmp_path)
    store.stage("r1", "m", "1", run_tables("r1"))
    store.publish("r1", "m", "1")
    with pytest.raises(QueryError, match="the tables are: audit_runs, onnx_parity") as error:
        report.query(tmp_path, "SELECT * FROM nope")
    assert error.value.exit_code == 2
