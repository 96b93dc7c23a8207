"""The store's promises under a hostile user: queries are read-only over the published tables, a sign-off covers
exactly what the readers show, crash leftovers are ignored, listed and collected, and a store that cannot hold a
report is refused before anything runs."""

import os
import time

import pyarrow.parquet as pq
import pytest
from conftest import store_is_empty
from test_store import run_tables
from typer.testing import CliRunner

from data_contracts import conform
from flows.cli import app
from interp_audit import report
from interp_audit.errors import QueryError
from interp_audit.html_report import render_html
from interp_audit.store import ReportStore

runner = CliRunner()
RUN = "9b7f1c2e-0d1a-4c55-8e3e-5a1f0c2d7b10"
PARTITION = "model=m/version=1"


def cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, " ".join(result.output.split())


def published(root, run_id=RUN, version="1"):
    store = ReportStore.open(root)
    store.stage(run_id, "m", version, run_tables(run_id, version))
    store.publish(run_id, "m", version)
    return store


def files_under(root):
    return {path: path.read_bytes() for path in root.rglob("*") if path.is_file()}


# ------------------------------------------------------------------------------------------ read-only queries

HOSTILE = [
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM read_csv('/etc/hostname')",
    "SELECT * FROM '{root}/onnx_parity/model=m/version=1/{run}.parquet'",
    "COPY (SELECT 1 AS x) TO '{cwd}/out.csv'",
    "COPY (SELECT * FROM onnx_parity) TO '{root}/onnx_parity/model=m/version=1/{run}.parquet'",
    "ATTACH '{cwd}/a.duckdb' AS a",
    "ATTACH '{cwd}/a.duckdb' AS a; CREATE TABLE a.t AS SELECT 1",
    "CREATE TABLE t AS SELECT 1",
    "CREATE OR REPLACE VIEW onnx_parity AS SELECT 1 AS x",
    "SET threads = 1",
    "SELECT 1; SELECT 2",
    "INSTALL httpfs",
    "LOAD httpfs",
    "EXPORT DATABASE '{cwd}/export'",
    "PRAGMA enable_profiling",
]


@pytest.mark.parametrize("sql", HOSTILE)
def test_query_refuses_anything_but_one_select_over_the_store(tmp_path, monkeypatch, sql):
    root, cwd = tmp_path / "store", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    published(root)
    before = files_under(root)
    statement = sql.format(root=root, run=RUN, cwd=cwd)
    started = time.monotonic()
    code, output = cli("report", "query", statement, "--store", root)
    assert code == 2 and "read-only over the store's tables" in output, output
    assert time.monotonic() - started < 10  # INSTALL must not try the network
    assert files_under(root) == before and not any(cwd.iterdir())


def test_query_still_answers_selects_and_sees_every_table(tmp_path):
    published(tmp_path)
    rows = report.query(tmp_path, "WITH p AS (SELECT * FROM onnx_parity) SELECT count(*) AS n FROM p").to_pylist()
    assert rows == [{"n": 1}]
    # a table no run wrote yet is an empty view, not an error
    assert report.query(tmp_path, "SELECT count(*) AS n FROM predictions").to_pylist() == [{"n": 0}]
    with pytest.raises(QueryError, match="read-only"):
        report.query(tmp_path, "SELECT 1; DROP VIEW onnx_parity")


def test_query_sees_no_python_variable_as_a_table(tmp_path, monkeypatch):
    import pandas as pd

    import interp_audit.report

    published(tmp_path)
    monkeypatch.setattr(interp_audit.report, "leak", pd.DataFrame({"secret": [1]}), raising=False)
    with pytest.raises(QueryError, match="leak"):
        report.query(tmp_path, "SELECT * FROM leak")


def test_query_format_is_a_choice(tmp_path):
    published(tmp_path)
    code, output = cli("report", "query", "SELECT 1", "--format", "xml", "--store", tmp_path)
    assert code == 2 and "xml" in output and "table" in output and "json" in output, output


# --------------------------------------------------------------------- what a sign-off covers = what is shown


def forge(root, run_id, folder):
    """A file with the run's id and different numbers, put beside the run's own by someone else."""
    rows = pq.read_table(root / "onnx_parity" / PARTITION / f"{run_id}.parquet").to_pylist()
    rows[0]["max_abs_diff"], rows[0]["argmax_agreement"] = 0.5, 0.0
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(conform("onnx_parity", rows), folder / "zz.parquet")


def test_files_added_beside_a_run_are_foreign_not_its_data(tmp_path):
    published(tmp_path)
    assert cli("review", RUN, "--approve", "--reviewer", "ada", "--store", tmp_path)[0] == 0
    forge(tmp_path, RUN, tmp_path / "onnx_parity" / PARTITION)
    forge(tmp_path, RUN, tmp_path / "onnx_parity" / "model=m" / "version=2")
    (tmp_path / "audit_runs" / PARTITION / "notes.txt").write_text("not parquet")

    parity = report.load_table(tmp_path, "onnx_parity", run_id=RUN)
    assert parity.max_abs_diff.tolist() == [1e-7]
    query = "SELECT count(*) AS n, max(max_abs_diff) AS worst FROM onnx_parity"
    assert report.query(tmp_path, query).to_pylist() == [{"n": 1, "worst": 1e-7}]
    assert "0.5" not in render_html(tmp_path, RUN).replace("0.5 MB", "")
    code, output = cli("report", "show", RUN, "--store", tmp_path)
    assert code == 0 and "1.00e-07" in output and "5.00e-01" not in output, output
    assert "matches the current tables" in output and "3 foreign file(s)" in output, output
    assert f"onnx_parity/{PARTITION}/zz.parquet" in output and "onnx_parity/model=m/version=2/zz.parquet" in output

    code, output = cli("store", "check", "--store", tmp_path)
    assert code == 1 and "3 foreign" in output and "model=m/version=2/zz.parquet" in output, output


def test_a_changed_published_file_is_caught_by_check_and_the_review(tmp_path):
    published(tmp_path)
    assert cli("review", RUN, "--approve", "--reviewer", "ada", "--store", tmp_path)[0] == 0
    assert cli("store", "check", "--store", tmp_path)[0] == 0
    path = tmp_path / "onnx_parity" / PARTITION / f"{RUN}.parquet"
    rows = pq.read_table(path).to_pylist()
    rows[0]["max_abs_diff"] = 0.5
    pq.write_table(conform("onnx_parity", rows), path)
    code, output = cli("store", "check", "--store", tmp_path)
    assert code == 1 and "1 modified since published" in output and path.name in output, output
    assert "DOES NOT MATCH" in cli("report", "show", RUN, "--store", tmp_path)[1]
    assert report.approval(tmp_path, report.find_run(tmp_path, RUN)) is None  # no longer anyone's baseline


def test_a_review_without_comment_prints_no_placeholder(tmp_path):
    published(tmp_path)
    assert cli("review", RUN, "--approve", "--reviewer", "ada", "--store", tmp_path)[0] == 0
    code, output = cli("report", "show", RUN, "--store", tmp_path)
    assert code == 0 and "matches the current tables" in output, output
    assert "nan" not in output.lower().replace("nanoseconds", ""), output


# ------------------------------------------------------------------------------------------- crash leftovers


def crash_during_publish(root, run_id):
    """Tables staged, some moved into place, the manifest never written: what kill -9 mid-publish leaves."""
    store = ReportStore.open(root)
    store.stage(run_id, "m", "2", run_tables(run_id, version="2"))
    target = root / "onnx_parity" / "model=m" / "version=2"
    target.mkdir(parents=True)
    (root / "_staging" / run_id / "onnx_parity" / "model=m" / "version=2" / f"{run_id}.parquet").rename(
        target / f"{run_id}.parquet"
    )


def test_orphans_alone_read_as_an_empty_store(tmp_path):
    crash_during_publish(tmp_path, "0c1d2e3f-4a5b-4c6d-8e7f-8091a2b3c4d5")
    assert report.list_runs(tmp_path).empty
    assert report.query(tmp_path, "SELECT count(*) AS n FROM onnx_parity").to_pylist() == [{"n": 0}]
    code, output = cli("report", "list", "--store", tmp_path)
    assert code == 0 and "no published runs" in output, output


def test_leftovers_are_listed_ignored_and_collected_after_the_grace_period(tmp_path):
    published(tmp_path)
    crashed = "0c1d2e3f-4a5b-4c6d-8e7f-8091a2b3c4d5"
    crash_during_publish(tmp_path, crashed)
    staged_only = ReportStore.open(tmp_path)
    staged_only.stage("1d2e3f40-5b6c-4d7e-8f80-91a2b3c4d5e6", "m", "3", run_tables("x", version="3"))
    forge(tmp_path, RUN, tmp_path / "onnx_parity" / PARTITION)

    assert report.query(tmp_path, "SELECT count(*) AS n FROM onnx_parity").to_pylist() == [{"n": 1}]
    code, output = cli("store", "check", "--store", tmp_path)
    assert code == 1 and "2 staging left" in output and "1 orphans" in output and "1 foreign" in output, output

    # young leftovers may belong to a live run: the default grace period keeps them
    code, output = cli("store", "gc", "--store", tmp_path)
    assert code == 0 and "nothing to remove" in output, output
    old = time.time() - 2 * 3600
    for path in (tmp_path / "_staging").rglob("*"):
        os.utime(path, (old, old))
    os.utime(tmp_path / "onnx_parity" / "model=m" / "version=2" / f"{crashed}.parquet", (old, old))
    code, output = cli("store", "gc", "--store", tmp_path)
    assert code == 0 and "3 leftover(s) removed" in output, output
    assert not (tmp_path / "_staging").exists() or not any((tmp_path / "_staging").iterdir())
    assert not (tmp_path / "onnx_parity" / "model=m" / "version=2" / f"{crashed}.parquet").exists()
    # the published run and the foreign file (evidence, for a person to look at) are untouched
    assert (tmp_path / "onnx_parity" / PARTITION / "zz.parquet").exists()
    assert list(report.list_runs(tmp_path).run_id) == [RUN]
    code, output = cli("store", "check", "--store", tmp_path)
    assert code == 1 and "staging" not in output and "orphans" not in output, output


# ------------------------------------------------------------------------------- stores that cannot hold a report


@pytest.mark.parametrize("store", ["foo://bucket/reports", "{file}/reports", "{file}"])
def test_an_unusable_store_is_refused_before_anything_runs(gray_spec, tmp_path, store):
    (tmp_path / "a-file").write_text("not a folder")
    spec = gray_spec(**{"report.store": store.format(file=tmp_path / "a-file")})
    for command in ("validate", "run"):
        code, output = cli(command, spec)
        assert code == 2 and "report store" in output and "Traceback" not in output, output
    assert store_is_empty(tmp_path / "reports")


def test_reading_commands_refuse_a_store_that_is_not_there(tmp_path):
    for store in ("foo://x", tmp_path / "nowhere"):
        for command in (("report", "list"), ("report", "query", "SELECT 1"), ("store", "check")):
            code, output = cli(*command, "--store", store)
            assert code == 2 and "report store" in output, (command, output)


# ------------------------------------------------------------------------------- stores written before manifests


def test_runs_written_before_manifests_are_kept_listed_and_adopted(tmp_path):
    import shutil

    published(tmp_path)
    assert cli("review", RUN, "--approve", "--reviewer", "ada", "--comment", "ok", "--store", tmp_path)[0] == 0
    crash_during_publish(tmp_path, "0c1d2e3f-4a5b-4c6d-8e7f-8091a2b3c4d5")
    shutil.rmtree(tmp_path / "_manifests")  # what a store written before manifests holds: the files alone
    assert report.list_runs(tmp_path).empty  # not shown: nothing says these files are what a run published

    code, output = cli("store", "check", "--store", tmp_path)
    assert code == 1 and "3 unrecorded" in output and "store adopt" in output, output
    old = time.time() - 2 * 3600
    for path in tmp_path.rglob("*.parquet"):
        os.utime(path, (old, old))
    cli("store", "gc", "--grace", "0", "--store", tmp_path)
    assert (tmp_path / "audit_runs" / PARTITION / f"{RUN}.parquet").exists()  # gc never removes a whole run
    assert len(list((tmp_path / "reviews" / PARTITION).iterdir())) == 1

    code, output = cli("store", "adopt", "--store", tmp_path)
    assert code == 0 and f"recorded run {RUN}" in output and "1 run(s) recorded" in output, output
    assert list(report.list_runs(tmp_path).run_id) == [RUN]
    assert report.load_table(tmp_path, "onnx_parity").run_id.tolist() == [RUN]
    assert report.load_table(tmp_path, "reviews").reviewer.tolist() == ["ada"]
    assert "matches the current tables: ok" in cli("report", "show", RUN, "--store", tmp_path)[1]
    assert cli("store", "check", "--store", tmp_path)[0] == 0  # the crashed run's orphan went with gc
    assert "nothing to record" in cli("store", "adopt", "--store", tmp_path)[1]
