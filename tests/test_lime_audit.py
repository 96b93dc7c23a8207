"""LIME inside the audit flow: tables, contracts, reproducibility and bad input, through real flow runs."""

import pyarrow.dataset as ds
import pytest
from conftest import demo_cnn_spec, planted_mlp_spec, store_is_empty
from typer.testing import CliRunner

from flows.cli import app
from interp_audit import report

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]
runner = CliRunner()


def cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, " ".join(result.output.split())


@pytest.fixture
def lime_spec(tmp_path, trained):
    """The honest demo CNN with a small LIME block; keyword changes go into ops.lime."""

    def write(seed=0, store="reports", contracts=None, **lime):
        block = {
            "samples": 6,
            "num_samples": 300,
            "heldout_samples": 100,
            "samples_per_task": 4,
            "hide": 0.0,
            "segmentation": {"method": "slic", "n_segments": 30},
            **lime,
        }
        return demo_cnn_spec(
            tmp_path, trained["honest"].weights_path, "1", "builtin:shapes?split=val&n=8", {"lime": block},
            ["features.4"], name="lime-audit", seed=seed, contracts=contracts or {},
            report={"store": str(tmp_path / store)},
        )  # fmt: skip

    return write


def test_lime_tables_are_published_and_reproducible(lime_spec, tmp_path):
    from prefect.settings import PREFECT_TASKS_REFRESH_CACHE, temporary_settings

    contracts = {"lime.min_r2_heldout": -10.0, "lime.min_stability": 0.0, "lime.min_faithfulness": -1.0}
    code, output = cli("run", lime_spec(contracts=contracts))
    assert code == 0, output
    explanations = report.load_table(tmp_path / "reports", "lime_explanations")
    attributions = report.load_table(tmp_path / "reports", "lime_attributions")
    assert len(explanations) == 6 and explanations.sample_id.is_unique
    assert explanations.label_name.isin(["circle", "square", "triangle"]).all()
    assert explanations.overlay_png.map(lambda png: png[:8] == b"\x89PNG\r\n\x1a\n").all()
    assert explanations.r2_in_sample.between(-1, 1).all() and explanations.stability.between(0, 1).all()
    assert explanations.faithfulness_correlation.between(-1, 1).all()
    per_sample = attributions.groupby("sample_id").agg(n=("feature", "size"), area=("area_fraction", "sum"))
    assert (per_sample.area.round(6) == 1.0).all()  # superpixels tile the image
    merged = explanations.set_index("sample_id").num_features
    assert (per_sample.n == merged.loc[per_sample.index]).all()
    segments_by_sample = attributions.groupby("sample_id").segment.agg(set)
    for row in explanations.itertuples():  # the map is the image's pixels, each holding one attributed segment id
        assert (row.height, row.width) == (64, 64) and len(row.segments) == 64 * 64
        assert set(row.segments.tolist()) == segments_by_sample[row.sample_id]
    results = report.load_table(tmp_path / "reports", "contract_results")
    assert {"lime_explanations", "lime_attributions"} <= set(results.table_name) and results.success.all()

    # same seed, every task recomputed: identical attribution bytes; another seed: different
    with temporary_settings({PREFECT_TASKS_REFRESH_CACHE: True}):
        assert cli("run", lime_spec(store="again"))[0] == 0
        assert cli("run", lime_spec(seed=1, store="other"))[0] == 0

    def attribution_columns(store):
        table = ds.dataset(tmp_path / store / "lime_attributions", partitioning="hive").to_table()
        table = table.sort_by([("sample_id", "ascending"), ("label", "ascending"), ("feature", "ascending")])
        return [table.column(name).to_pylist() for name in ("sample_id", "feature", "weight", "rank")]

    assert attribution_columns("reports") == attribution_columns("again")
    assert attribution_columns("reports") != attribution_columns("other")


def test_lime_contract_failure(lime_spec, tmp_path):
    code, output = cli("run", lime_spec(seed=5, contracts={"lime.min_r2_heldout": 0.9999}))
    assert code == 1, output
    results = report.load_table(tmp_path / "reports", "contract_results")
    failed = results[~results.success]
    assert failed.column.tolist() == ["r2_heldout"] and failed.table_name.tolist() == ["lime_explanations"]


@pytest.mark.parametrize(
    "lime, message",
    [
        ({"num_samples": 0}, "ops.lime.num_samples: must be a positive integer (got 0)"),
        ({"kernel_width": -0.1}, "ops.lime.kernel_width: must be > 0 (got -0.1)"),
        ({"labels": [7]}, "ops.lime.labels[0]: class 7 is outside the model's classes 0..2"),
        (
            {"labels": ["hexagon"]},
            "ops.lime.labels[0]: no class named 'hexagon'; classes are: circle, square, triangle",
        ),
        ({"samples": ["nope"]}, "ops.lime.samples[0]: no sample 'nope' in the data"),
        ({"segmentation": {"method": "slic", "n_segments": 1}}, "segmentation gave 1 segment"),
    ],
)
def test_lime_bad_input(lime_spec, tmp_path, lime, message):
    code, output = cli("run", lime_spec(**lime))
    assert code == 2, output
    assert message in output
    assert store_is_empty(tmp_path / "reports")


def test_lime_on_a_tabular_model(tmp_path, tabular_trained):
    spec = planted_mlp_spec(
        tmp_path,
        tabular_trained["tabular-planted"].weights_path,
        "builtin:tabular-planted?split=val&n=40",
        {"lime": {"samples": 10, "num_samples": 500, "top_k": 2}},
    )
    code, output = cli("run", spec)
    assert code == 0, output
    explanations = report.load_table(tmp_path / "reports", "lime_explanations")
    assert explanations.overlay_png.isna().all() and explanations.segments.isna().all()
    top_two = explanations.top_features.map(lambda features: set(features))
    assert (top_two == {"income", "debt_ratio"}).mean() >= 0.9
    attributions = report.load_table(tmp_path / "reports", "lime_attributions")
    assert (
        attributions.bin.notna().all() and attributions.area_fraction.isna().all() and attributions.segment.isna().all()
    )
