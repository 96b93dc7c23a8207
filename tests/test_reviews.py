"""Sign-off: reviews are appended (never rewritten) and bound to the hash of the run's published tables."""

import hashlib

import pyarrow.parquet as pq
from test_store import run_tables
from typer.testing import CliRunner

from data_contracts import conform
from flows.cli import app
from interp_audit import report
from interp_audit.store import ReportStore

runner = CliRunner()


def cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, " ".join(result.output.split())


def published(tmp_path, run_id="r1"):
    store = ReportStore.open(tmp_path)
    store.stage(run_id, "m", "1", run_tables(run_id))
    store.publish(run_id, "m", "1")
    return store


def test_reviews_append_and_bind_to_the_tables_hash(tmp_path):
    published(tmp_path)
    code, output = cli("review", "r1", "--approve", "--reviewer", "ada", "--comment", "fine", "--store", tmp_path)
    assert code == 0 and "approved run r1 by ada" in output, output
    first = report.load_table(tmp_path, "reviews")
    # the hash is over the files the run's manifest lists: each one's path and content hash (computed here
    # independently, from the files on disk)
    digest = hashlib.sha256()
    for table in ("audit_runs", "onnx_parity"):
        path = f"{table}/model=m/version=1/r1.parquet"
        digest.update(f"{path}\0{hashlib.sha256((tmp_path / path).read_bytes()).hexdigest()}\n".encode())
    assert first.tables_sha256.tolist() == [digest.hexdigest()]
    code, output = cli("report", "show", "r1", "--store", tmp_path)
    assert "review: approved by ada" in output and "matches the current tables" in output, output

    assert cli("review", "r1", "--reject", "--reviewer", "bob", "--comment", "no", "--store", tmp_path)[0] == 0
    both = report.load_table(tmp_path, "reviews").sort_values("reviewed_at")
    assert both.decision.tolist() == ["approved", "rejected"]
    assert both.iloc[0].to_dict() == first.iloc[0].to_dict()  # the first review is untouched
    assert len(list((tmp_path / "reviews" / "model=m" / "version=1").iterdir())) == 2  # one file per review


def test_a_changed_report_no_longer_matches_its_approval(tmp_path):
    published(tmp_path)
    assert cli("review", "r1", "--approve", "--reviewer", "ada", "--store", tmp_path)[0] == 0
    path = tmp_path / "onnx_parity" / "model=m" / "version=1" / "r1.parquet"
    table = pq.read_table(path).to_pylist()
    table[0]["max_abs_diff"] = 0.5  # someone quietly rewrites a published number
    pq.write_table(conform("onnx_parity", table), path)
    code, output = cli("report", "show", "r1", "--store", tmp_path)
    assert code == 0 and "DOES NOT MATCH the current tables" in output, output


def test_reviewing_an_unknown_run_is_refused(tmp_path):
    published(tmp_path)
    code, output = cli("review", "nope", "--approve", "--reviewer", "ada", "--store", tmp_path)
    assert code == 2 and "no run with id 'nope'" in output, output
    assert not (tmp_path / "reviews").exists()


def test_no_api_call_rewrites_a_recorded_review(tmp_path):
    import pyarrow as pa
    import pytest

    store = published(tmp_path)
    row = report.review_run(store, "r1", approve=True, reviewer="ada", comment="fine")
    path = tmp_path / "reviews" / "model=m" / "version=1" / f"{row['review_id']}.parquet"
    before = path.read_bytes()
    forged = pa.Table.from_pylist([{**row, "decision": "rejected", "comment": "forged"}])
    with pytest.raises(FileExistsError, match="never rewritten"):
        store.append("reviews", row["review_id"], "m", "1", forged)
    assert path.read_bytes() == before and report.load_table(tmp_path, "reviews").decision.tolist() == ["approved"]
    assert not (tmp_path / "_staging").exists() or not any((tmp_path / "_staging").iterdir())
