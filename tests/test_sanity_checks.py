"""Sanity checks of explanations (issue 20; Adebayo et al. 2018): the model's weights re-drawn from the output down,
the same samples explained again. Ground truth: the reference is LIME's own explanation, bit for bit; an explainer
that ignores the model is flagged by the contract, and LIME on the honest demo model is not."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import demo_cnn_spec, store_is_empty
from safetensors.torch import load_file
from typer.testing import CliRunner

import data_contracts
from flows.cli import app
from interp_audit import report
from interp_ops import datasets, lime, onnx_bundle
from interp_ops.demo_models import DEMO_INPUT, shapes_cnn
from interp_ops.randomisation import cascade_order, cascading_copies
from interp_ops.sanity import randomisation_similarity, rank_similarity
from tasks.lime import _predict

runner = CliRunner()
SHAPE = tuple(DEMO_INPUT["shape"])
SEGMENTS = lime.Segmentation(method="slic", n_segments=30)


def cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, " ".join(result.output.split())


@pytest.fixture(scope="module")
def honest(trained):
    model = shapes_cnn()
    model.load_state_dict(load_file(trained["honest"].weights_path))
    samples = datasets.load_samples("builtin:shapes?split=val&n=6", ".", 0)
    x = datasets.to_model_input(samples, SHAPE, (0, 1), DEMO_INPUT["mean"], DEMO_INPUT["std"])
    display = datasets.to_display(x, (0, 1), DEMO_INPUT["mean"], DEMO_INPUT["std"])
    return model.eval(), x, display


def onnx_predict(model):
    return _predict(onnx_bundle.export_torch(model.eval(), SHAPE, []), "cpu", 0)


def test_the_reference_is_limes_own_explanation_and_the_cascade_redraws_one_more_module_per_step(honest):
    model, x, display = honest
    original = onnx_predict(model)
    settings = dict(num_samples=300, hide=0.0, segmentation=SEGMENTS, seed=4, heldout_samples=20)
    explained = lime.ImageLime(original).attribute(x, display, stability_seeds=1, **settings)
    weights = lime.ImageLime(original).fixed_surrogates(x, display, **settings)(original)
    for index in range(len(x)):
        mine = {int(r["feature"]): r["weight"] for r in explained.attributions if r["sample_index"] == index}
        assert [mine[segment] for segment in sorted(mine)] == weights[index][0].tolist()  # bit for bit

    order = cascade_order(model)
    assert order[0] == "classifier" and order[-1] == "features.0"
    copies = cascading_copies(model, seed=0, steps=3)
    assert [name for name, _ in copies] == order[:3]
    trained = dict(model.named_parameters())
    for step, (_, copy) in enumerate(copies):
        redrawn = {n for n, p in copy.named_parameters() if not torch.equal(p, trained[n])}
        assert {n.rsplit(".", 1)[0] for n in redrawn} == set(order[: step + 1])
    again = cascading_copies(model, seed=0, steps=3)
    assert all(torch.equal(a, b) for a, b in zip(copies[2][1].parameters(), again[2][1].parameters()))
    # a deeper cascade draws its first steps the same
    assert torch.equal(cascading_copies(model, 0, 4)[1][1].classifier.weight, copies[1][1].classifier.weight)


def edge_weights(display: np.ndarray):
    """A planted "explainer" that ignores the model: each superpixel's weight is its mean edge strength."""
    segments = [SEGMENTS(image) for image in display]

    def weights(_predict) -> list[np.ndarray]:
        out = []
        for image, segment_map in zip(display, segments):
            gray = image.mean(axis=-1)
            edges = np.hypot(*np.gradient(gray))
            ids = np.unique(segment_map)
            out.append(np.array([[edges[segment_map == i].mean() for i in ids]]))
        return out

    return weights


def test_an_explainer_that_ignores_the_model_is_flagged_and_lime_on_the_honest_model_is_not(honest):
    model, x, display = honest
    original = onnx_predict(model)
    randomised = [onnx_predict(copy) for _, copy in cascading_copies(model, seed=0, steps=3)]
    explain = lime.ImageLime(original).fixed_surrogates(
        x, display, num_samples=500, hide=0.0, segmentation=SEGMENTS, seed=0, heldout_samples=0
    )
    ours, ours_abs = randomisation_similarity(explain, original, randomised)
    edges, edges_abs = randomisation_similarity(edge_weights(display), original, randomised)
    np.testing.assert_allclose(edges, 1.0)  # the same ranking whatever the model
    assert ours.max() < 0.7 and ours.mean() < 0.2 and ours_abs.mean() < 0.6

    def rows(similarity, absolute):
        return [
            {"run_id": "r", "method": "lime", "sample_id": f"s{i}", "label": 0, "step": s + 1,
             "randomised_through": "x", "similarity": float(similarity[s, i, 0]),
             "similarity_abs": float(absolute[s, i, 0])}
            for s in range(similarity.shape[0]) for i in range(similarity.shape[1])
        ]  # fmt: skip

    contract = {"lime.max_randomised_similarity": 0.7}
    for similarity, absolute, passes in ((ours, ours_abs, True), (edges, edges_abs, False)):
        table = data_contracts.conform("sanity_checks", rows(similarity, absolute))
        results = data_contracts.validate_tables({"sanity_checks": table}, contract)
        (threshold,) = [r for r in results if r["column"] == "similarity" and '"max_value": 0.7' in r["details"]]
        assert threshold["success"] is passes, threshold


def test_rank_similarity_is_spearman_per_label_and_zero_for_a_constant_ranking():
    a = np.array([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    assert rank_similarity(a, a).tolist() == [1.0, 1.0]
    assert rank_similarity(a, a[::-1]).tolist() == [-1.0, -1.0]
    assert rank_similarity(a, np.ones_like(a)).tolist() == [0.0, 0.0]


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_the_sanity_check_runs_inside_the_audit_and_is_refused_for_an_onnx_model(tmp_path, trained):
    ops = {
        "lime": {
            "samples": 4,
            "num_samples": 300,
            "hide": 0.0,
            "segmentation": {"method": "slic", "n_segments": 30},
            "stability_seeds": 1,
            "heldout_samples": 20,
            "sanity": {"samples": 3, "steps": 3},
        }
    }
    path = demo_cnn_spec(
        tmp_path, trained["honest"].weights_path, "1", "builtin:shapes?split=val&n=8", ops, ["features.12"],
        class_names=None, name="sanity-demo", contracts={"lime.max_randomised_similarity": 0.7},
        gates=[{"metric": "lime.randomised_similarity", "max": 0.5}],
    )  # fmt: skip
    spec = yaml.safe_load(path.read_text())
    code, output = cli("run", path)
    assert code == 0 and "LIME sanity: rank similarity" in output, output
    assert "gate lime.randomised_similarity: passed" in output, output
    checks = report.load_table(tmp_path / "reports", "sanity_checks")
    assert len(checks) == 3 * 3 and checks.groupby("step").randomised_through.first().tolist() == [
        "classifier", "features.13", "features.12"
    ]  # fmt: skip
    explained = report.load_table(tmp_path / "reports", "lime_explanations")
    assert set(checks.sample_id) == set(explained.sample_id.iloc[:3])
    assert (checks.merge(explained, on=["sample_id", "label"]).shape[0]) == len(checks)  # the labels LIME explained
    results = report.load_table(tmp_path / "reports", "contract_results")
    assert results[results.table_name == "sanity_checks"].success.all()
    run_id = report.list_runs(tmp_path / "reports").run_id.iloc[0]
    code, output = cli("report", "show", run_id, "--store", tmp_path / "reports")
    assert code == 0 and "LIME sanity check" in output and "features.13" in output, output
    html = tmp_path / "r.html"
    assert cli("report", "html", run_id, "--store", tmp_path / "reports", "-o", html)[0] == 0
    assert "Sanity check: the model" in html.read_text()
    gate = report.load_table(tmp_path / "reports", "gate_results").iloc[0]
    by_step = checks.groupby("step").similarity.mean()
    assert gate.value == pytest.approx(by_step.max()) and f"step {by_step.idxmax()}" in gate.detail

    spec["model"]["version"] = "2"  # the same weights again: the diff per step is there and is 0
    path.write_text(yaml.safe_dump(spec))
    assert cli("run", path)[0] == 0
    diffs = report.load_table(tmp_path / "reports", "version_diffs")
    steps = diffs[diffs.method == "sanity"].sort_values("item")
    assert steps.item.tolist() == ["step=1", "step=2", "step=3"] and steps.layer.tolist() == [
        "classifier", "features.13", "features.12"
    ]  # fmt: skip
    assert np.allclose(steps.old_value, by_step.values) and np.allclose(steps.value, 0.0)

    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(onnx_bundle.export_torch(shapes_cnn().eval(), SHAPE, []))
    spec["model"] = {
        "source": "onnx",
        "name": "m",
        "version": "1",
        "path": str(onnx_path),
        "input": spec["model"]["input"],
    }
    spec["report"]["store"] = str(tmp_path / "onnx-reports")
    path.write_text(yaml.safe_dump(spec))
    code, output = cli("run", path)
    assert code == 2 and "ops.lime.sanity: the check re-draws the weights" in output, output
    assert store_is_empty(tmp_path / "onnx-reports")


# ------------------------------------------------------------------------------------------ activation maximization


ACTMAX_SANITY_DATA = "builtin:shapes?split=val&n=48"


def actmax_sanity_spec(tmp_path, weights, **actmax) -> Path:
    ops = {"activation_max": {"steps": 32, "exemplars": 2, "sanity": True, **actmax}}
    return demo_cnn_spec(
        tmp_path, weights, "1", ACTMAX_SANITY_DATA, ops, ["features.12"], class_names=None, name="actmax-sanity",
        gates=[{"metric": "activation_max.share_beating_random", "min": 0.6}],
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_actmax_sanity_renders_the_redrawn_copy_and_the_trained_units_beat_it(tmp_path, trained):
    """The random columns are the re-drawn copy's own: its dataset maxima recomputed here with torch, its final
    activations with the renderer on that copy; and the honest model's units are rendered better than the copy's."""
    from interp_ops import actmax
    from interp_ops.randomisation import random_init_copy

    path = actmax_sanity_spec(tmp_path, trained["honest"].weights_path)
    code, output = cli("run", path)
    assert code == 0 and "gate activation_max.share_beating_random: passed" in output, output
    units = report.load_table(tmp_path / "reports", "actmax_units").sort_values("unit")
    assert units.random_robustness.notna().all()
    compared = units.dropna(subset=["ratio", "random_ratio"])
    assert len(compared) >= 10 and (compared.ratio > compared.random_ratio).mean() >= 0.6, compared

    model = shapes_cnn()
    model.load_state_dict(load_file(trained["honest"].weights_path))
    randomised = random_init_copy(model.eval(), seed=0)
    samples = datasets.load_samples(ACTMAX_SANITY_DATA, tmp_path, 0)
    x = torch.from_numpy(datasets.to_model_input(samples, SHAPE, (0, 1), DEMO_INPUT["mean"], DEMO_INPUT["std"]))
    captured = {}
    randomised.features[12].register_forward_hook(lambda module, args, out: captured.update(out=out))
    with torch.no_grad():
        randomised(x)
    random_max = captured["out"].mean(dim=(2, 3)).max(dim=0).values.numpy()
    checked = list(range(8))  # a unit's render does not depend on the batch it is rendered in
    renders = actmax.render_units(
        randomised, "features.12", checked, input_shape=SHAPE, value_range=(0, 1), mean=[0.5] * 3,
        std=[0.25] * 3, seed=0, device="cpu", steps=32,
    )  # fmt: skip
    assert (random_max[checked] > 0).sum() >= 2  # some of the checked units have a ratio in the copy
    for row in units[units.unit.isin(checked)].itertuples():
        if random_max[row.unit] > 0:
            expected = renders.final_activation[row.unit] / random_max[row.unit]
            assert row.random_ratio == pytest.approx(expected, rel=1e-3), row.unit
        else:
            assert np.isnan(row.random_ratio)

    run_id = report.list_runs(tmp_path / "reports").run_id.iloc[0]
    code, output = cli("report", "show", run_id, "--store", tmp_path / "reports")
    assert code == 0 and "re-drawn" in output, output


def test_the_gate_against_the_redrawn_copy_needs_the_sanity_check(tmp_path, trained, capsys):
    path = actmax_sanity_spec(tmp_path, trained["honest"].weights_path, sanity=False)
    code, output = cli("run", path)
    assert code == 2 and "set ops.activation_max.sanity: true" in output, output
    assert store_is_empty(tmp_path / "reports")

    onnx_path = tmp_path / "m.onnx"  # a model given as ONNX has neither gradients nor weights to re-draw
    onnx_path.write_bytes(onnx_bundle.export_torch(shapes_cnn().eval(), SHAPE, ["features.12"]))
    spec = yaml.safe_load(actmax_sanity_spec(tmp_path, trained["honest"].weights_path).read_text())
    spec["model"] = {"source": "onnx", "name": "m", "version": "1", "path": str(onnx_path),
                     "input": spec["model"]["input"], "layers": ["features.12"]}  # fmt: skip
    path.write_text(yaml.safe_dump(spec))
    code, output = cli("run", path)
    assert code == 2 and "ops.activation_max:" in output and "model.source: torch" in output, output
    assert store_is_empty(tmp_path / "reports")
