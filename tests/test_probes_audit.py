"""Linear probes as an audit method (issue 19): real runs of the demo models where the planted patch and the shapes
are the ground truth, a tabular model's planted column, a version diff and a gate on the same table, and the
refusals of bad input."""

import pytest
from conftest import demo_cnn_spec, planted_mlp_spec, store_is_empty
from typer.testing import CliRunner

from flows.cli import app
from interp_audit import html_report, report

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]
runner = CliRunner()
LAYERS = ["features.4", "features.8", "features.12"]


def cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, " ".join(result.output.split())


def test_the_patch_is_readable_early_in_the_shortcut_model_and_the_shape_late_in_the_honest_one(tmp_path, trained):
    """On its own data (the corner patch gives the class away) the shortcut CNN makes the class readable from its
    first audited layer, selectivity >= 0.3 (measured 0.47); the honest CNN, on scenes without a patch, makes the
    class readable only with depth (accuracy 0.38 -> 0.89 from features.4 to features.12). A concept of the concept
    source is probed on its images. The version diff and a selectivity gate read the same table."""
    store = tmp_path / "reports"
    ops = {"probes": {"attributes": ["class", "concept:red"], "concept_source": "builtin:concepts?n=120"}}
    early_class = [{"metric": "probes.selectivity", "attribute": "class", "layer": "features.4", "max": 0.25}]
    honest = demo_cnn_spec(tmp_path, trained["honest"].weights_path, "1", "builtin:shapes?split=val&n=600", ops,
                           LAYERS, gates=early_class)  # fmt: skip
    code, output = cli("run", honest)
    assert code == 0, output
    results = report.load_table(store, "probe_results").set_index(["attribute", "layer"])
    assert len(results) == 6 and list(results.loc["class"].depth) == [0, 1, 2]
    accuracy = results.loc["class"].accuracy_mean
    assert accuracy["features.12"] >= accuracy["features.4"] + 0.3, accuracy
    assert (results.loc["class"].samples == 600).all() and (results.loc["concept:red"].samples == 120).all()
    assert (results.loc["concept:red"].inputs == "concept_source").all()
    classes = results.loc["class"]
    assert (classes.control_accuracy < classes.accuracy_mean).all() and (classes.control_accuracy < 0.45).all()

    shortcut = demo_cnn_spec(tmp_path, trained["shortcut"].weights_path, "2",
                             "builtin:shapes-shortcut?split=val&n=600", ops, LAYERS, gates=early_class)  # fmt: skip
    code, output = cli("run", shortcut)
    assert code == 1 and "failed_gates (probes.selectivity)" in output, output
    runs = report.load_table(store, "audit_runs").set_index("model_version")
    results = report.load_table(store, "probe_results", run_id=runs.loc["2", "run_id"]).set_index(
        ["attribute", "layer"]
    )
    first = results.loc[("class", "features.4")]
    assert first.selectivity >= 0.3, first
    diffs = report.load_table(store, "version_diffs", run_id=runs.loc["2", "run_id"])
    diffs = diffs[diffs.method == "probes"].set_index(["item", "layer"])
    assert len(diffs) == 6 and diffs.loc[("class", "features.4"), "new_value"] == first.selectivity
    html = html_report.render_html(store, runs.loc["2", "run_id"])
    section = html[html.index('<section id="probes">') :]
    assert "concept:red" in section and "features.12" in section
    code, output = cli("report", "show", runs.loc["2", "run_id"][:8], "--store", store)
    assert code == 0 and "linear probes" in output, output


def tabular_spec(tmp_path, tabular_trained, probes: dict) -> str:
    weights = tabular_trained["tabular-planted"].weights_path
    return planted_mlp_spec(tmp_path, weights, "builtin:tabular-planted?split=val&n=300", {"probes": probes})


def test_a_tabular_models_planted_column_is_readable_off_its_hidden_layer(tmp_path, tabular_trained):
    """The planted MLP's label is income - debt_ratio > 0: its hidden layer keeps income readable (above/below the
    median), and the class; a column with few values keeps them as classes."""
    code, output = cli("run", tabular_spec(tmp_path, tabular_trained, {"attributes": ["class", "column:income"]}))
    assert code == 0, output
    results = report.load_table(tmp_path / "reports", "probe_results").set_index(["attribute", "layer"])
    assert results.loc[("column:income", "act")].selectivity >= 0.3, results
    assert results.loc[("class", "act")].accuracy_mean >= 0.9, results


@pytest.mark.parametrize(
    "probes, message",
    [
        ({"attributes": ["column:salary"]}, "ops.probes.attributes: column:salary is not a column of the data"),
        ({"attributes": ["colour"]}, "ops.probes.attributes[0]: String should match pattern"),
        ({"folds": 1}, "ops.probes.folds: must be at least 2"),
        ({"layers": ["hidden", "head"]}, "ops.probes.layers[1]: 'head' is not one of model.layers"),
        ({"attributes": ["concept:red"]}, "ops.probes.attributes: needs an image model"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(tmp_path, tabular_trained, probes, message):
    code, output = cli("run", tabular_spec(tmp_path, tabular_trained, probes))
    assert code == 2 and message in output, output
    assert store_is_empty(tmp_path / "reports")


def test_an_unknown_concept_is_refused_with_the_names_it_could_be(tmp_path, trained):
    ops = {"probes": {"attributes": ["concept:zebra"], "concept_source": "builtin:concepts?n=60"}}
    spec = demo_cnn_spec(tmp_path, trained["honest"].weights_path, "1", "builtin:shapes?split=val&n=30", ops, LAYERS)
    code, output = cli("run", spec)
    assert code == 2 and "concept:zebra: no concept named 'zebra'" in output and "blue, brick" in output, output
    assert store_is_empty(tmp_path / "reports")
