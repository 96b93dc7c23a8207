"""The spec model: parsing, defaults, docs that stay in step with the code."""

import json
from pathlib import Path

import pytest
import yaml

from interp_audit.errors import SpecError
from interp_audit.spec import json_schema, load_spec, parse_spec

ROOT = Path(__file__).resolve().parent.parent


def test_json_schema_in_docs_is_up_to_date():
    assert json.loads((ROOT / "docs" / "spec.schema.json").read_text()) == json_schema(), (
        "regenerate with: interp-audit schema > docs/spec.schema.json"
    )


@pytest.mark.parametrize("name", ["shapes-demo.yaml", "shapes-shortcut-demo.yaml"])
def test_shipped_example_specs_parse(name):
    loaded = load_spec(ROOT / "deployments" / "specs" / name)
    assert loaded.spec.model.layers and loaded.spec.schedule.cron == "0 3 * * *"
    assert loaded.spec.contracts["onnx.max_abs_diff"] == 1e-4


def minimal(**changes):
    spec = {
        "name": "a",
        "model": {"source": "onnx", "name": "m", "version": 3, "path": "m.onnx", "input": {"shape": [3, 8, 8]}},
        "data": "builtin:shapes",
    }
    spec.update(changes)
    return yaml.safe_dump(spec)


def test_defaults_and_numeric_version():
    loaded = parse_spec(minimal(), Path("."))
    spec = loaded.spec
    assert spec.model.version == "3" and spec.seed == 0 and spec.report.store == "./reports"
    assert spec.model.input.range == (0.0, 1.0) and spec.schedule is None and spec.contracts == {}
    assert len(loaded.sha256) == 64


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"schedule": {"cron": "every day"}}, "schedule.cron: not a valid cron expression"),
        ({"schedule": {"cron": "0 3 * * *", "timezone": "Mars/Olympus"}}, "schedule.timezone: unknown IANA time zone"),
        (
            {"model": {"source": "keras", "name": "m", "version": "1", "input": {"shape": [3]}}},
            "model.source: must be one of: torch, onnx, sklearn, mlflow (got 'keras')",
        ),
        (
            {"model": {"source": "onnx", "name": "m", "version": "1", "path": "m.onnx", "input": {"shape": [2, 8, 8]}}},
            "model.input.shape: images must have 1 or 3 channels",
        ),
        (
            {
                "model": {
                    "source": "onnx",
                    "name": "m",
                    "version": "1",
                    "path": "m.onnx",
                    "input": {"shape": [3, 8, 8], "mean": [0.5], "std": [0.2]},
                }
            },
            "mean: needs one value per channel (3), got 1",
        ),
        (
            {"model": {"source": "torch", "name": "m", "version": "1", "weights": "w.pt", "input": {"shape": [3]}}},
            "factory: required",
        ),
    ],
)
def test_errors_name_the_path_and_the_fix(changes, message):
    with pytest.raises(SpecError) as error:
        parse_spec(minimal(**changes), Path("."))
    assert any(message in line for line in error.value.messages), error.value.messages


def test_every_error_is_reported_at_once():
    with pytest.raises(SpecError) as error:
        parse_spec(minimal(seed="x", extra=1), Path("."))
    messages = sorted(error.value.messages)
    assert len(messages) == 2, messages
    assert messages[0].startswith("extra: unknown key") and messages[1] == "seed: must be an integer (got 'x')"
