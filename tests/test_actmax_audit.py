"""Activation maximization inside the audit flow: renders and exemplars published, scored and checked."""

import io

import numpy as np
import pytest
import torch
from conftest import demo_cnn_spec
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from interp_audit import report

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]
runner = CliRunner()


def cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, " ".join(result.output.split())


def decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def test_demo_cnn_renders_outdo_the_data_on_the_last_conv_layer(tmp_path, trained):
    """Acceptance: for >= 90% of the last conv layer's units the render beats the best real image."""
    path = demo_cnn_spec(
        tmp_path, trained["honest"].weights_path, "1", "builtin:shapes?split=val&n=200",
        {"activation_max": {"layers": ["features.12"], "exemplars": 5}}, ["features.8", "features.12"],
        class_names=None, name="actmax-demo", contracts={"actmax.min_robustness": 0.0},
    )  # fmt: skip
    code, output = cli("run", path)
    assert code == 0, output
    units = report.load_table(tmp_path / "reports", "actmax_units")
    exemplars = report.load_table(tmp_path / "reports", "actmax_exemplars")
    assert sorted(units.unit) == list(range(64)) and set(units.layer) == {"features.12"}
    assert (units.final_activation >= units.dataset_max).mean() >= 0.9, units.ratio.describe()
    assert units.ratio.dropna().gt(0).all()  # null only where the best real image leaves the unit <= 0
    assert all(decode(png).shape == (64, 64, 3) for png in units.render_png)
    assert (units.curve.map(len) == units.curve_steps.map(len)).all()
    assert units.curve_steps.map(lambda steps: steps[-1] == 256).all()
    assert len(exemplars) == 64 * 5
    for _, group in exemplars.groupby("unit"):
        assert list(group.sort_values("rank").activation) == sorted(group.activation, reverse=True)
    best = exemplars[exemplars["rank"] == 1].set_index("unit").activation
    assert np.allclose(units.set_index("unit").dataset_max.loc[best.index], best)
    results = report.load_table(tmp_path / "reports", "contract_results")
    assert {"actmax_units", "actmax_exemplars"} <= set(results.table_name) and results.success.all()


def test_a_gray_user_model_gets_renders_and_true_exemplars(gray_spec, tmp_path):
    """A 1x28x28 model we did not design; exemplar activations are checked against torch directly."""
    from user_models import gray_net

    from interp_ops.datasets import load_samples, to_model_input

    spec = gray_spec(ops={"activation_max": {"layers": ["body.conv1"], "units": "first:3", "steps": 8, "exemplars": 4}})
    code, output = cli("run", spec)
    assert code == 0, output
    units = report.load_table(tmp_path / "reports", "actmax_units")
    exemplars = report.load_table(tmp_path / "reports", "actmax_exemplars")
    assert sorted(units.unit) == [0, 1, 2] and len(exemplars) == 3 * 4
    assert all(decode(png).shape == (28, 28) for png in units.render_png)
    assert all(decode(png).shape == (28, 28) for png in exemplars.thumbnail_png)

    samples = load_samples("builtin:shapes?split=val&n=12", tmp_path, seed=3)
    x = torch.from_numpy(to_model_input(samples, (1, 28, 28), (0, 1), [0.5], [0.5]))
    with torch.no_grad():
        channel_means = gray_net().body.conv1(x).mean(dim=(2, 3)).numpy()  # (N, 4)
    position = {sample_id: i for i, sample_id in enumerate(samples.ids)}
    for row in exemplars.itertuples():
        assert row.activation == pytest.approx(float(channel_means[position[row.sample_id], row.unit]), abs=1e-4)
    for unit in range(3):
        ranked = exemplars[exemplars.unit == unit].sort_values("rank")
        expected = np.sort(channel_means[:, unit])[::-1][:4]
        assert np.allclose(ranked.activation, expected, atol=1e-4)
