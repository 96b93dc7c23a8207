"""Data contracts: schemas, `conform`, and real Great Expectations validations."""

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

import data_contracts as dc
from data_contracts.registry import _TABLE_MODULES

DOCS = Path(__file__).resolve().parents[1] / "docs" / "tables.md"
UTC = dt.UTC
THRESHOLDS_OK = {"onnx.max_abs_diff": 1e-3, "onnx.min_argmax_agreement": 0.9}


def audit_run(**changes) -> dict:
    row = {
        "run_id": "run-1",
        "audit_name": "resnet-audit",
        "model_name": "resnet18",
        "model_version": "3",
        "model_source": "torch",
        "weights_sha256": "a" * 64,
        "onnx_sha256": "b" * 64,
        "spec_sha256": "c" * 64,
        "spec_text": "name: resnet-audit\n",
        "seed": 0,
        "data_uri": "file:///data/val",
        "num_samples": 2,
        "started_at": dt.datetime(2025, 1, 1, 12, 0, tzinfo=UTC),
        "finished_at": dt.datetime(2025, 1, 1, 12, 5, tzinfo=UTC),
        "status": "passed",
        "device": "cpu",
        "ort_providers": ["CPUExecutionProvider"],
        "package_versions": json.dumps({"torch": "2.13.0"}),
    }
    return row | changes


def parity(output: str = "logits", **changes) -> dict:
    row = {
        "run_id": "run-1",
        "output": output,
        "shape": [10],
        "max_abs_diff": 3.1e-7,
        "max_rel_diff": 2e-6,
        "argmax_agreement": 1.0,
    }
    return row | changes


def prediction(sample_id: str, **changes) -> dict:
    row = {
        "run_id": "run-1",
        "sample_id": sample_id,
        "label": 1,
        "label_name": "one",
        "predicted": 1,
        "predicted_name": "one",
        "probability": 0.9,
        "correct": True,
    }
    return row | changes


def good_tables() -> dict[str, pa.Table]:
    tables = {
        "audit_runs": dc.conform("audit_runs", [audit_run()]),
        "onnx_parity": dc.conform("onnx_parity", [parity(), parity("layer4", shape=[512, 7, 7])]),
        # The unlabeled sample leaves nulls in the nullable int64/bool columns.
        "predictions": dc.conform(
            "predictions",
            [
                prediction("0"),
                prediction("1", label=None, label_name=None, predicted_name=None, correct=None),
            ],
        ),
    }
    results = dc.validate_tables(tables, THRESHOLDS_OK)
    tables["contract_results"] = dc.conform("contract_results", [{"run_id": "run-1", **row} for row in results])
    return tables


@pytest.fixture(scope="module")
def tables() -> dict[str, pa.Table]:
    return good_tables()


def failures(rows: list[dict]) -> list[tuple]:
    return [(r["table_name"], r["expectation"], r["column"]) for r in rows if not r["success"]]


def test_good_tables_pass_every_expectation(tables):
    rows = dc.validate_tables(tables, THRESHOLDS_OK)
    assert failures(rows) == []
    assert [r["table_name"] for r in rows] == sorted((r["table_name"] for r in rows), key=list(tables).index)
    expected = []
    for name in tables:
        contract = dc.TABLES[name]
        expected += [e.configuration.type for e in contract.expectations()]
        if name == "onnx_parity":
            expected += ["expect_column_max_to_be_between", "expect_column_min_to_be_between"]
    assert [r["expectation"] for r in rows] == expected
    for row in rows:
        assert set(row) == {"table_name", "expectation", "column", "success", "observed_value", "details"}
        assert json.loads(row["details"]).get("column") == row["column"]
    # Every scalar column gets a type check; list columns cannot (see _GX_TYPE_NAMES).
    typed = {(r["table_name"], r["column"]) for r in rows if r["expectation"] == "expect_column_values_to_be_of_type"}
    assert ("predictions", "label") in typed and ("audit_runs", "started_at") in typed
    assert ("onnx_parity", "shape") not in typed


def test_rows_are_deterministic(tables):
    assert dc.validate_tables(tables, THRESHOLDS_OK) == dc.validate_tables(tables, THRESHOLDS_OK)


@pytest.mark.parametrize(
    ("table", "rows", "failed", "observed"),
    [
        pytest.param(
            "onnx_parity",
            [parity(), parity("layer4", max_abs_diff=-1.0)],
            ("expect_column_values_to_be_between", "max_abs_diff"),
            "1 unexpected: [-1.0]",
            id="negative-diff",
        ),
        pytest.param(
            "onnx_parity",
            [parity(), parity(None)],
            ("expect_column_values_to_not_be_null", "output"),
            "1 null",
            id="null-key",
        ),
        pytest.param(
            "onnx_parity",
            [parity(), parity()],
            ("expect_compound_columns_to_be_unique", None),
            "2 unexpected: [{'run_id': 'run-1', 'output': 'logits'}, {'run_id': 'run-1', 'output': 'logits'}]",
            id="duplicate-compound-key",
        ),
        pytest.param(
            "audit_runs",
            [audit_run(), audit_run(status="passed")],
            ("expect_column_values_to_be_unique", "run_id"),
            "2 unexpected: ['run-1', 'run-1']",
            id="duplicate-key",
        ),
        pytest.param(
            "audit_runs",
            [audit_run(status="running")],
            ("expect_column_values_to_be_in_set", "status"),
            "1 unexpected: ['running']",
            id="status-not-allowed",
        ),
        pytest.param(
            "predictions",
            [prediction("0", probability=1.5)],
            ("expect_column_values_to_be_between", "probability"),
            "1 unexpected: [1.5]",
            id="probability-above-1",
        ),
    ],
)
def test_bad_rows_fail_the_right_expectation(table, rows, failed, observed):
    results = dc.validate_tables({table: dc.conform(table, rows)}, {})
    assert failures(results) == [(table, *failed)]
    (row,) = [r for r in results if r["success"] is False]
    assert row["observed_value"] == observed


def test_extra_column_fails_only_the_column_set(tables):
    bad = tables["onnx_parity"].append_column("model", pa.array(["resnet18"] * 2))
    results = dc.validate_tables({"onnx_parity": bad}, {})
    assert failures(results) == [("onnx_parity", "expect_table_columns_to_match_set", None)]
    assert results[0]["observed_value"] == "unexpected: ['model']"


def test_missing_column_fails_the_column_set_and_its_own_checks(tables):
    bad = tables["predictions"].drop_columns(["probability"])
    results = dc.validate_tables({"predictions": bad}, {})
    assert results[0]["observed_value"] == "missing: ['probability']"
    assert failures(results) == [
        ("predictions", "expect_table_columns_to_match_set", None),
        ("predictions", "expect_column_values_to_be_of_type", "probability"),
        ("predictions", "expect_column_values_to_not_be_null", "probability"),
        ("predictions", "expect_column_values_to_be_between", "probability"),
    ]
    assert all(r["observed_value"].startswith("error: ") for r in results[1:] if not r["success"])


def test_wrong_type_fails_the_type_check(tables):
    bad = tables["predictions"].set_column(4, "predicted", pa.array([1.0, 0.0], pa.float64()))
    results = dc.validate_tables({"predictions": bad}, {})
    assert failures(results) == [("predictions", "expect_column_values_to_be_of_type", "predicted")]
    (row,) = [r for r in results if not r["success"]]
    assert row["observed_value"] == "float64"


def test_max_threshold_fails_at_zero_and_passes_at_1e_3(tables):
    strict = dc.validate_tables({"onnx_parity": tables["onnx_parity"]}, {"onnx.max_abs_diff": 0.0})
    assert failures(strict) == [("onnx_parity", "expect_column_max_to_be_between", "max_abs_diff")]
    assert strict[-1]["observed_value"] == "max=3.1e-07"
    assert json.loads(strict[-1]["details"]) == {"column": "max_abs_diff", "max_value": 0.0}

    loose = dc.validate_tables({"onnx_parity": tables["onnx_parity"]}, {"onnx.max_abs_diff": 1e-3})
    assert failures(loose) == []
    assert loose[-1]["expectation"] == "expect_column_max_to_be_between"


def test_min_threshold_and_empty_table():
    low = dc.conform("onnx_parity", [parity(), parity("layer4", argmax_agreement=0.5)])
    results = dc.validate_tables({"onnx_parity": low}, {"onnx.min_argmax_agreement": 0.9})
    assert failures(results) == [("onnx_parity", "expect_column_min_to_be_between", "argmax_agreement")]
    assert results[-1]["observed_value"] == "min=0.5"

    empty = dc.conform("onnx_parity", [])
    results = dc.validate_tables({"onnx_parity": empty}, {"onnx.max_abs_diff": 1e-3})
    assert failures(results) == [("onnx_parity", "expect_column_max_to_be_between", "max_abs_diff")]
    assert results[-1]["observed_value"] == "no values"


def test_thresholds_for_other_tables_are_not_checked(tables):
    results = dc.validate_tables({"predictions": tables["predictions"]}, {"onnx.max_abs_diff": 0.0})
    assert failures(results) == []
    assert {r["table_name"] for r in results} == {"predictions"}


def test_unknown_threshold_key_names_the_known_keys(tables):
    with pytest.raises(KeyError, match=r"model\.min_accuracy.*onnx\.max_abs_diff"):
        dc.validate_tables(tables, {"model.min_accuracy": 0.9})


def test_unknown_table_is_rejected(tables):
    with pytest.raises(KeyError, match="known tables"):
        dc.validate_tables({"nope": tables["predictions"]}, {})


def test_conform_casts_to_the_contract_schema():
    frame = pd.DataFrame(
        {
            "correct": [True, None],
            "run_id": ["run-1", "run-1"],
            "sample_id": [0, 1],  # ints become strings
            "label": [1, None],  # pandas made this float64 with NaN
            "label_name": [None, None],
            "predicted": [1.0, 2.0],
            "predicted_name": ["one", None],
            "probability": [0.5, 1],
        }
    )
    table = dc.conform("predictions", frame)
    assert table.schema == dc.TABLES["predictions"].schema
    assert table.schema.field("label").metadata[b"doc"]
    assert table.to_pydict()["sample_id"] == ["0", "1"]
    assert table.to_pydict()["label"] == [1, None]

    # Rows may disagree on keys; timestamps with ns precision but no sub-us part narrow to us.
    row = audit_run()
    del row["weights_sha256"]
    row["started_at"] = pd.Timestamp("2025-01-01T12:00:00", tz="UTC")
    runs = dc.conform("audit_runs", [row, audit_run(run_id="run-2")])
    assert runs.schema == dc.TABLES["audit_runs"].schema
    assert runs.column("weights_sha256").to_pylist() == [None, "a" * 64]

    assert dc.conform("onnx_parity", []).schema == dc.TABLES["onnx_parity"].schema
    assert dc.conform("onnx_parity", dc.conform("onnx_parity", [parity()])).num_rows == 1


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([parity(model="resnet18")], r"'onnx_parity': unexpected columns \['model'\]"),
        (
            [{k: v for k, v in parity().items() if k != "shape"}],
            r"'onnx_parity': missing columns \['shape'\]",
        ),
        ([parity(max_abs_diff="tiny")], r"'onnx_parity': column 'max_abs_diff'"),
        ([parity(shape=[1.5])], r"'onnx_parity': column 'shape'.*list<item: int64>"),
    ],
)
def test_conform_rejects(rows, message):
    with pytest.raises(dc.ContractSchemaError, match=message):
        dc.conform("onnx_parity", rows)


def test_conform_rejects_pyarrow_tables_too(tables):
    bad = tables["predictions"].set_column(4, "predicted", pa.array([1.5, 0.0]))
    with pytest.raises(dc.ContractSchemaError, match="'predicted' of type double"):
        dc.conform("predictions", bad)


def test_registry():
    assert list(dc.TABLES) == list(_TABLE_MODULES)
    for name, contract in dc.TABLES.items():
        assert contract.name == name
        assert contract.schema.names[0] == "run_id" and contract.unique_key[0] == "run_id"
        assert all(field.metadata[b"doc"] for field in contract.schema)
    assert {"onnx.max_abs_diff", "onnx.min_argmax_agreement", "lime.min_r2_heldout"} <= set(dc.THRESHOLDS)
    for key, threshold in dc.THRESHOLDS.items():
        assert threshold.key == key and threshold.bound in ("max", "min")
        assert threshold.column in dc.TABLES[threshold.table].schema.names


def test_malformed_contract_is_rejected():
    with pytest.raises(ValueError, match="rules name columns not in the schema"):
        dc.TableContract(
            name="t",
            description="",
            schema=pa.schema([dc.TABLES["predictions"].schema.field("run_id")]),
            unique_key=("run_id",),
            allowed_values={"status": ("a",)},
            ranges={},
        )


def test_import_pulls_in_neither_prefect_nor_gx():
    code = "import sys, data_contracts; print(sorted({m.split('.')[0] for m in sys.modules}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "'prefect'" not in out and "'great_expectations'" not in out


def test_docs_are_up_to_date():
    assert DOCS.read_text() == dc.table_docs_markdown(), (
        "docs/tables.md is stale: run `python -m data_contracts > docs/tables.md`"
    )
    for name in dc.TABLES:
        assert f"## `{name}`" in DOCS.read_text()
