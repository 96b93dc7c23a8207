"""`interp-audit verdict` and the JSON of the reading commands, on published runs built here (fast); the demo models'
real audits are checked in test_review_gates.py."""

import json

import jsonschema
import pyarrow.parquet as pq
import pytest
from test_store import run_tables
from typer.testing import CliRunner

from data_contracts import conform
from flows.cli import app
from interp_audit.store import ReportStore
from interp_audit.verdict import SCHEMA_PATH, schema_json

runner = CliRunner()
SCHEMA = json.loads(SCHEMA_PATH.read_text())


def cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, " ".join(result.stderr.split())


def publish(store_path, run_id, version="1", status="passed", spec_text="name: a", gates=()):
    store = ReportStore.open(store_path)
    tables = run_tables(run_id, version, status)
    runs = tables["audit_runs"].to_pylist()
    runs[0]["spec_text"] = spec_text
    tables["audit_runs"] = conform("audit_runs", runs)
    if gates:
        tables["gate_results"] = conform("gate_results", [{"run_id": run_id, **gate} for gate in gates])
    store.stage(run_id, "m", version, tables)
    store.publish(run_id, "m", version)


def verdict_json(store, *args) -> tuple[int, dict]:
    code, out, err = cli("verdict", "m", *args, "--store", store, "--format", "json")
    answer = json.loads(out)
    jsonschema.validate(answer, SCHEMA)
    return code, answer


def test_the_schema_file_is_current():
    assert SCHEMA_PATH.read_text() == schema_json(), "run `python -m interp_audit.verdict` and commit the schema"


def test_a_spec_that_waits_for_a_sign_off_is_cleared_only_by_an_approval_of_its_tables(tmp_path):
    publish(tmp_path, "r1", spec_text="name: a\nreview:\n  wait_for_sign_off: true\n")
    code, out, err = cli("verdict", "m", "1", "--store", tmp_path)
    assert code == 1 and "m v1 NOT cleared (run r1): awaiting review" in err, err
    assert cli("verdict", "m", "1", "--require", "passed", "--store", tmp_path)[0] == 0

    assert cli("review", "r1", "--approve", "--reviewer", "ada", "--store", tmp_path)[0] == 0
    code, answer = verdict_json(tmp_path, "1")
    assert code == 0 and answer["cleared"] and answer["requirement"] == "approved", answer
    assert answer["reviews"][0]["reviewer"] == "ada" and answer["approval_matches_tables"] is True
    assert answer["reviews"][0]["tables_sha256"] == answer["tables_sha256"]

    path = tmp_path / "onnx_parity" / "model=m" / "version=1" / "r1.parquet"
    rows = pq.read_table(path).to_pylist()
    rows[0]["max_abs_diff"] = 0.5  # a published number changed after the approval
    pq.write_table(conform("onnx_parity", rows), path)
    code, answer = verdict_json(tmp_path, "1")
    assert code == 1 and answer["reason"].startswith("tables changed since the approval by ada"), answer
    assert answer["approval_matches_tables"] is False

    assert cli("review", "r1", "--approve", "--reviewer", "ada", "--store", tmp_path)[0] == 0  # re-approved
    assert cli("verdict", "m", "1", "--store", tmp_path)[0] == 0
    assert cli("review", "r1", "--reject", "--reviewer", "bob", "--comment", "leaks", "--store", tmp_path)[0] == 0
    code, out, err = cli("verdict", "m", "1", "--store", tmp_path)
    assert code == 1 and "rejected by bob" in err and "leaks" in err, err  # the latest review stands


def test_failed_gates_and_contracts_are_named_and_the_latest_run_counts(tmp_path):
    gate = {"metric": "lime.region_share", "params": "{}", "min": None, "max": 0.15, "detail": "corner"}
    publish(
        tmp_path,
        "r1",
        status="failed_gates",
        gates=[{"gate": "corner-shortcut", "value": 0.4, "outcome": "failed", **gate}],
    )
    code, answer = verdict_json(tmp_path, "1")
    assert code == 1 and answer["reason"] == "failed gates: corner-shortcut (lime.region_share = 0.4)", answer
    assert answer["gates"][0]["value"] == 0.4 and answer["requirement"] == "passed"

    publish(
        tmp_path, "r2", status="passed", gates=[{"gate": "corner-shortcut", "value": 0.01, "outcome": "passed", **gate}]
    )
    code, answer = verdict_json(tmp_path, "1")
    assert code == 0 and answer["run"]["run_id"] == "r2", answer  # run ids sort after r1 at the same start time


def test_unknown_model_or_version_is_exit_2_naming_what_exists(tmp_path):
    publish(tmp_path, "r1")
    code, out, err = cli("verdict", "other", "1", "--store", tmp_path)
    assert code == 2 and "no published audit of model 'other'; the store's models: m" in err, err
    code, out, err = cli("verdict", "m", "7", "--store", tmp_path)
    assert code == 2 and "no published audit of m version '7'; its audited versions: 1" in err, err
    assert out == ""
    assert cli("verdict", "m", "1", "--store", tmp_path / "missing")[0] == 2


@pytest.mark.parametrize(
    "command", [["verdict", "m", "1"], ["report", "list"], ["report", "show", "r1"], ["report", "diff", "m", "1", "2"]]
)
def test_an_unknown_format_is_exit_2(tmp_path, command):
    publish(tmp_path, "r1")
    code, out, err = cli(*command, "--store", tmp_path, "--format", "yaml")
    assert code == 2 and "yaml" in err, err


def test_reading_commands_print_json_and_csv_keyed_by_the_tables_columns(tmp_path):
    publish(tmp_path, "r1")
    assert cli("review", "r1", "--approve", "--reviewer", "ada", "--store", tmp_path)[0] == 0
    code, out, _ = cli("report", "list", "--store", tmp_path, "--format", "json")
    (listed,) = json.loads(out)
    columns = [field.name for field in conform("audit_runs", []).schema if field.name != "spec_text"]
    columns += ["model", "version"]  # the partition columns (docs/tables.md)
    assert code == 0 and list(listed) == columns and listed["started_at"].startswith("2026-11-25T00:00:00")
    code, out, _ = cli("report", "list", "--store", tmp_path, "--format", "csv")
    assert out.splitlines()[0] == ",".join(columns)

    code, out, _ = cli("report", "show", "r1", "--store", tmp_path, "--format", "json")
    shown = json.loads(out)
    assert shown["run"]["run_id"] == "r1" and shown["onnx_parity"][0]["max_abs_diff"] == 1e-7
    assert shown["reviews"][0]["reviewer"] == "ada" and shown["reviews"][0]["matches_tables"] is True
    assert shown["table_rows"] == {"audit_runs": 1, "onnx_parity": 1, "reviews": 1, "model_cards": 1}
    assert shown["gate_results"] == [] and shown["tables_sha256"] == shown["reviews"][0]["tables_sha256"]
