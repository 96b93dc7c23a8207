"""Network dissection inside the audit flow: tables for the model and its random baseline, through real runs."""

from pathlib import Path

import pytest
import yaml
from conftest import demo_cnn_spec, store_is_empty
from typer.testing import CliRunner

from flows.cli import app
from interp_audit import report

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]
runner = CliRunner()


def cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, " ".join(result.output.split())


def demo_spec(tmp_path, weights, **dissection) -> Path:
    ops = {"dissection": {"layers": ["features.8", "features.12"], "concepts": "builtin:concepts?n=200", **dissection}}
    return demo_cnn_spec(
        tmp_path, weights, "1", "builtin:shapes?split=val&n=8", ops, ["features.8", "features.12", "classifier"],
        class_names=None, name="dissection-demo",
    )  # fmt: skip


def test_demo_cnn_is_dissected_next_to_its_random_baseline(tmp_path, trained):
    code, output = cli("run", demo_spec(tmp_path, trained["honest"].weights_path))
    assert code == 0, output
    units = report.load_table(tmp_path / "reports", "dissection_units")
    tally = report.load_table(tmp_path / "reports", "dissection_tally")
    summary = report.load_table(tmp_path / "reports", "dissection_summary")
    assert units.groupby("layer").size().to_dict() == {"features.8": 64, "features.12": 64}
    assert (units.is_detector == (units.iou >= 0.04)).all()
    assert units.baseline_iou.notna().all() and (units.baseline_max_iou >= units.baseline_iou).all()
    assert set(summary.category) == {"color", "object", "texture", "scene"}
    assert summary.groupby("layer").detectors.sum().to_dict() == units.groupby("layer").is_detector.sum().to_dict()
    assert (summary.detectors_above_baseline <= summary.detectors).all()
    assert summary.baseline_detectors.notna().all()
    # every unit's best concept is in the tally with the same IoU
    best = units.merge(tally, on=["layer", "unit", "concept"], suffixes=("", "_tally"))
    assert len(best) == (units.iou >= 0.01).sum() and (best.iou == best.iou_tally).all()
    results = report.load_table(tmp_path / "reports", "contract_results")
    assert {"dissection_units", "dissection_tally", "dissection_summary"} <= set(results.table_name)
    assert results.success.all()

    run_id = report.list_runs(tmp_path / "reports").run_id.iloc[0]
    code, output = cli("report", "show", run_id, "--store", tmp_path / "reports")
    assert code == 0 and "network dissection" in output and "baseline" in output, output


def test_a_gray_user_model_is_dissected_on_rgb_concepts(gray_spec, tmp_path):
    spec = gray_spec(
        ops={"dissection": {"layers": ["body.conv1"], "concepts": "builtin:concepts?n=60&size=48", "baseline": "none"}}
    )
    code, output = cli("run", spec)
    assert code == 0, output
    units = report.load_table(tmp_path / "reports", "dissection_units")
    assert sorted(units.unit) == [0, 1, 2, 3] and units.baseline_iou.isna().all()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"ops.dissection.quantile": 0.5}, "ops.dissection.quantile: must lie strictly between 0 and 0.5 (got 0.5)"),
        (
            {"ops.dissection.layers": ["features.8", "classifier"]},
            "ops.dissection.layers[1]: 'classifier' outputs shape (3,) per sample, with no spatial dimensions",
        ),
        ({"ops.dissection.concepts": "empty-concepts"}, "ops.dissection.concepts:"),
    ],
)
def test_bad_dissection_input_is_refused(tmp_path, trained, changes, message):
    path = demo_spec(tmp_path, trained["honest"].weights_path)
    spec = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        target = spec
        for parent in parents:
            target = target[parent]
        target[key] = value
    (tmp_path / "empty-concepts").mkdir()
    path.write_text(yaml.safe_dump(spec))
    code, output = cli("run", path)
    assert code == 2 and message in output, output
    assert store_is_empty(tmp_path / "reports")
