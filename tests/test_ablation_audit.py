"""Unit ablation as an audit method (issue 20): real runs of the demo models, where dissection and the data give the
ground truth, a user model of other shape, and the refusals of bad input."""

from pathlib import Path

import pytest
from conftest import ASSETS, demo_cnn_spec, save_state_dict, store_is_empty
from typer.testing import CliRunner

from flows.cli import app
from interp_audit import report

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]
runner = CliRunner()
LAYER = "features.12"


def cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, " ".join(result.output.split())


def demo_spec(tmp_path, weights, version: str, data: str, ablation: dict, gates: list) -> Path:
    ops = {
        "dissection": {"concepts": "builtin:concepts?n=150", "baseline": "none"},
        "ablation": {"sizes": [4, 16], "random_draws": 10, **ablation},
    }
    data = f"builtin:{data}?split=val&n=200"
    return demo_cnn_spec(tmp_path, weights, version, data, ops, [LAYER], name=f"ablation-v{version}", gates=gates)


def test_each_model_is_found_deciding_with_what_it_learned(tmp_path, trained):
    """The honest CNN decides with shape detectors: the detectors that cost a class most are detectors of that very
    shape, and zeroing 16 of them takes the class to chance, far past 16 random units. The shortcut CNN decides with
    the corner patch: its 16 most important units (ranked among all) break every class as well, and not one of
    them detects a shape. Their version diff and the fragility gate read the same table."""
    store = tmp_path / "reports"
    honest = demo_spec(
        tmp_path, trained["honest"].weights_path, "1", "shapes", {"units": "detectors"},
        [{"metric": "ablation.max_drop", "max": 0.9, "k": 16}],
    )  # fmt: skip
    code, output = cli("run", honest)
    assert code == 0, output
    units = report.load_table(store, "dissection_units")
    results = report.load_table(store, "ablation_results")
    concept = dict(zip(units.unit, units.concept))
    assert sorted(set(results.k)) == [4, 16] and set(results.class_name) == {"circle", "square", "triangle"}
    for row in results[results.k == 16].itertuples():
        assert row.accuracy_drop > 0.15 and row.accuracy_drop > row.random_drop_mean + 3 * row.random_drop_std, row
        assert set(row.units) <= set(units.unit[units.is_detector])  # only detectors were ranked
    for shape in ("circle", "triangle"):
        (top,) = results[(results.k == 16) & (results.class_name == shape)].units
        assert sum(concept[unit] == shape for unit in top) >= 8, [concept[unit] for unit in top]
    detectors = units[units.is_detector]
    assert detectors.ablation_probability_drop.notna().all() and units[~units.is_detector].ablation_class.isna().all()
    for shape in ("circle", "triangle"):  # a shape's detectors matter most to that shape's class
        theirs = detectors[detectors.concept == shape]
        assert (theirs.ablation_class == shape).mean() >= 0.6, theirs[["unit", "ablation_class"]]

    shortcut = demo_spec(
        tmp_path, trained["shortcut"].weights_path, "2", "shapes-shortcut", {"units": "all"},
        [{"metric": "ablation.max_drop", "max": 0.2, "k": 16, "name": "fragile"}],
    )  # fmt: skip
    code, output = cli("run", shortcut)
    assert code == 1 and "gate fragile: failed" in output, output
    run_v2 = report.list_runs(store, "shapes-cnn", "2").run_id.iloc[0]
    results = report.load_table(store, "ablation_results", run_id=run_v2)
    units = report.load_table(store, "dissection_units", run_id=run_v2)
    shape_detectors = set(units.unit[units.is_detector & (units.category == "object")])
    for row in results[results.k == 16].itertuples():
        assert row.accuracy_drop >= 0.2 and row.random_drop_mean < 0.05, row
        assert not set(row.units) & shape_detectors

    diffs = report.load_table(store, "version_diffs", run_id=run_v2)
    ablation = diffs[diffs.method == "ablation"]
    triangle = ablation[(ablation.item == "triangle k=16") & (ablation.scope == "class")].iloc[0]
    v1 = report.load_table(store, "ablation_results", run_id=report.list_runs(store, "shapes-cnn", "1").run_id.iloc[0])
    assert triangle.old_value == v1[(v1.k == 16) & (v1.class_name == "triangle")].accuracy_drop.iloc[0]
    assert triangle.new_value == results[(results.k == 16) & (results.class_name == "triangle")].accuracy_drop.iloc[0]
    assert set(ablation[ablation.scope == "overall"].item) == {"k=4", "k=16"}

    code, output = cli("report", "show", run_v2, "--store", store)
    assert code == 0 and "unit ablation" in output and "largest ablation drop (k=16)" in output, output
    html = tmp_path / "v2.html"
    assert cli("report", "html", run_v2, "--store", store, "-o", html)[0] == 0
    page = html.read_text()
    assert 'id="ablation"' in page and "Unit ablation: largest drop" in page
    run_v1 = report.list_runs(store, "shapes-cnn", "1").run_id.iloc[0]
    assert cli("report", "html", run_v1, "--store", store, "-o", tmp_path / "v1.html")[0] == 0
    assert "Detectors the decision uses" in (tmp_path / "v1.html").read_text()


def test_a_user_model_of_another_shape_is_ablated_and_a_layer_inside_a_skip_is_refused(gray_spec, tmp_path):
    """A 1x28x28, ten-class model: only the classes the data holds are measured. A layer that a skip connection
    goes around cannot be ablated on its own: exit 2, the reason, nothing in the store."""
    path = gray_spec(ops={"ablation": {"layers": ["body.conv1"], "units": "top:3", "sizes": [1, 2], "random_draws": 3}})
    code, output = cli("run", path)
    assert code == 0, output
    results = report.load_table(tmp_path / "reports", "ablation_results")
    assert len(results) == 3 * 2 and set(results.class_index) == {0, 1, 2}
    assert results.units.map(len).tolist() == [1, 1, 1, 2, 2, 2] and (results.units.map(max) < 4).all()
    assert len({unit for units in results.units for unit in units}) <= 3  # every class's units among the top 3

    from user_models import skip_gray_net

    store = tmp_path / "skip-reports"
    path = gray_spec(
        **{
            "model.factory": f"{ASSETS / 'user_models.py'}:skip_gray_net",
            "model.weights": save_state_dict(skip_gray_net(), tmp_path / "skip.pt").name,
            "model.layers": ["body.conv1", "skip_conv"],
            "ops": {"ablation": {"layers": ["skip_conv"], "sizes": [1]}},
            "report.store": str(store),
        }
    )
    code, output = cli("run", path)
    assert code == 2 and "'skip_conv' does not separate the graph" in output and "skip connection" in output, output
    assert store_is_empty(store)


@pytest.mark.parametrize(
    "ops, extra, message",
    [
        (
            {"ablation": {"units": "detectors"}},
            {},
            "ops.ablation.units: detectors are dissection's; add ops.dissection",
        ),
        ({"ablation": {"units": [0, 9]}}, {}, "ops.ablation.units: unit 9 is out of range for layer 'body.act2'"),
        ({"ablation": {"sizes": [1, 7]}}, {}, "ops.ablation.sizes: 7 is more than the 6 units of 'body.act2'"),
        ({"ablation": {"layers": ["head"]}}, {}, "ops.ablation.layers[0]: 'head' is not one of model.layers"),
        ({"ablation": {"sizes": [2, 2]}}, {}, "ops.ablation.sizes: each size once"),
        (
            {"ablation": {"units": "top:7", "sizes": [1]}},
            {},
            "ops.ablation.units: top:7 asks for more units than layer 'body.act2'",
        ),
        ({"ablation": {"units": "top:2", "sizes": [1, 3]}}, {}, "ops.ablation.sizes: 3 is more than the 2 units"),
        ({"ablation": {"units": "top:0"}}, {}, "ops.ablation.units"),
        (
            {"ablation": {"sizes": [1]}},
            {"gates": [{"metric": "ablation.max_drop", "max": 0.5, "k": 4}]},
            "gates[0].k: 4 is not one of ops.ablation.sizes [1]",
        ),
        (
            {"ablation": {"units": "detectors"}, "dissection": {"layers": ["body.conv1"], "baseline": "none"}},
            {},
            "'body.act2' is not dissected",
        ),
    ],
)
def test_bad_ablation_input_is_refused_with_exit_2_and_nothing_written(gray_spec, tmp_path, ops, extra, message):
    path = gray_spec(ops=ops, **extra)
    code, output = cli("run", path)
    assert code == 2 and message in output, output
    assert store_is_empty(tmp_path / "reports")


def test_unlabelled_data_and_detectors_without_dissection_in_only_are_refused(gray_spec, tmp_path):
    import numpy as np

    data = tmp_path / "unlabelled.npy"
    np.save(data, np.random.default_rng(0).random((6, 1, 28, 28), dtype=np.float32))
    code, output = cli("run", gray_spec(data=str(data), ops={"ablation": {"sizes": [1]}}))
    assert code == 2 and "ops.ablation: the data gives no class labels" in output, output
    path = gray_spec(
        ops={"ablation": {"units": "detectors"}, "dissection": {"layers": ["body.act2"], "baseline": "none"}}
    )
    code, output = cli("run", path, "--only", "ablation")
    assert code == 2 and "--only: ablation ranks dissection's detectors" in output, output
    assert store_is_empty(tmp_path / "reports")
