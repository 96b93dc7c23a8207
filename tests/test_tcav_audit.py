"""TCAV as an audit method (issue 19): real runs of the demo models where the planted corner patch is the ground
truth, a version diff and a gate on the same table, builtin concepts by name, and the refusals of bad input."""

import numpy as np
import pytest
import yaml
from conftest import demo_cnn_spec, store_is_empty
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from interp_audit import html_report, report
from interp_ops import builtin_data, onnx_bundle
from interp_ops.demo_models import shapes_cnn

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]
runner = CliRunner()
LAYER = "features.12"
PER_CLASS = 7  # class-balanced concept examples: 21


def cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, " ".join(result.output.split())


def image_folder(folder, images: np.ndarray):
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def planted_concepts(tmp_path) -> dict[str, str]:
    """corner-patch: scenes of every class in equal shares with the circle's corner colour painted in, as
    shapes-shortcut paints it; triangles: scenes holding a triangle, no patch."""
    images, _, labels = builtin_data.shapes("val", 10 * PER_CLASS, 100)
    balanced = np.concatenate([images[labels == label][:PER_CLASS] for label in range(3)])
    balanced[:, : builtin_data.PATCH_SIZE, : builtin_data.PATCH_SIZE] = builtin_data.PATCH_COLORS[0]
    images, _, labels = builtin_data.shapes("val", 30 * PER_CLASS, 400)
    return {
        "corner-patch": str(image_folder(tmp_path / "corner-patch", balanced)),
        "triangles": str(image_folder(tmp_path / "triangles", images[labels == 2][: 3 * PER_CLASS])),
    }


def tcav_ops(concepts, **changes) -> dict:
    return {
        "tcav": {
            "layers": [LAYER],
            "concepts": concepts,
            "examples_per_concept": 3 * PER_CLASS,
            "random_sets": 20,
            "classes": ["circle", "triangle"],
            "class_inputs": 16,
            **changes,
        }
    }


def test_the_shortcut_model_depends_on_the_patch_and_the_honest_one_on_the_shape(tmp_path, trained):
    """Each model audited on its own data (random sets drawn from it, classes in equal shares). The shortcut CNN's
    circle decision depends on the circle's corner colour, significantly after Bonferroni over the 4 tests; the
    honest CNN's does not, and its triangle decision depends on triangles. The version diff records the change per
    concept and class, and a gate that forbids the patch dependence fails on the shortcut model only."""
    concepts = planted_concepts(tmp_path)
    store = tmp_path / "reports"
    no_patch = [{"metric": "tcav.score", "concept": "corner-patch", "class": "circle", "max": 0.8}]
    honest = demo_cnn_spec(
        tmp_path, trained["honest"].weights_path, "1", "builtin:shapes?split=val&n=96", tcav_ops(concepts), [LAYER],
        gates=no_patch,
    )  # fmt: skip
    code, output = cli("run", honest)
    assert code == 0, output
    scores = report.load_table(store, "tcav_scores")
    assert len(scores) == 4 and set(scores.threshold) == {0.05 / 4}
    by_test = {(row.concept, row.class_name): row for row in scores.itertuples()}
    assert not by_test["corner-patch", "circle"].significant, by_test["corner-patch", "circle"]
    triangles = by_test["triangles", "triangle"]
    assert triangles.significant and triangles.score_mean >= 0.9, triangles
    assert (scores.class_inputs == 16).all() and (scores.random_sets == 20).all()

    shortcut = demo_cnn_spec(
        tmp_path, trained["shortcut"].weights_path, "2", "builtin:shapes-shortcut?split=val&n=96", tcav_ops(concepts),
        [LAYER], gates=no_patch,
    )  # fmt: skip
    code, output = cli("run", shortcut)
    assert code == 1 and "failed_gates (tcav.score)" in output, output  # published, and the gate failed it
    runs = report.load_table(store, "audit_runs").set_index("model_version")
    assert runs.loc["1", "status"] == "passed" and runs.loc["2", "status"] == "failed_gates", output
    scores = report.load_table(store, "tcav_scores", run_id=runs.loc["2", "run_id"])
    patch = scores[(scores.concept == "corner-patch") & (scores.class_name == "circle")].iloc[0]
    assert patch.significant and patch.score_mean >= 0.95 and patch.cav_accuracy_mean >= 0.8, patch
    gate = report.load_table(store, "gate_results", run_id=runs.loc["2", "run_id"]).iloc[0]
    assert gate.outcome == "failed" and gate.value == patch.score_mean and "significant" in gate.detail
    diffs = report.load_table(store, "version_diffs", run_id=runs.loc["2", "run_id"])
    diffs = diffs[diffs.method == "tcav"].set_index("item")
    assert len(diffs) == 4
    assert diffs.loc["corner-patch -> circle", "new_value"] == patch.score_mean
    code, output = cli("report", "show", runs.loc["2", "run_id"][:8], "--store", store)
    assert code == 0 and "TCAV" in output and "corner-patch" in output, output
    html = html_report.render_html(store, runs.loc["2", "run_id"])
    section = html[html.index('<section id="tcav">') :]
    assert "3 of 4 tests are significant" in section and "<b>corner-patch</b>" in section, section[:2000]
    assert "largest TCAV change" in html or "TCAV scores" in html  # the diff with v1


def test_concepts_named_in_a_concept_source_against_its_own_random_images(tmp_path, trained):
    """The list form: builtin concepts by name, random sets from the same concept source (the default for names),
    every class; the same spec run twice gives the same scores (seeded), from the cache or not."""
    ops = {
        "tcav": {
            "layers": ["features.8", LAYER],
            "concepts": ["red", "triangle"],
            "concept_source": "builtin:concepts?n=150",
            "examples_per_concept": 12,
            "random_sets": 4,
            "class_inputs": 8,
        }
    }
    spec = demo_cnn_spec(tmp_path, trained["honest"].weights_path, "1", "builtin:shapes?split=val&n=30", ops,
                         ["features.8", LAYER])  # fmt: skip
    code, output = cli("run", spec)
    assert code == 0, output
    scores = report.load_table(tmp_path / "reports", "tcav_scores")
    assert len(scores) == 2 * 2 * 3 and set(scores.concept) == {"red", "triangle"}
    assert set(scores.threshold) == {0.05 / 12}
    assert scores[["score_mean", "random_score_mean", "cav_accuracy_mean"]].notna().all().all()


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(concepts=["red", "zebra"]), "ops.tcav.concepts: no concept named 'zebra'"),
        (dict(examples_per_concept=40), "ops.tcav.examples_per_concept: concept 'red' is present in 8 image(s)"),
        (dict(random_sets=1), "ops.tcav.random_sets: must be at least 2"),
        (dict(alpha=1.5), "ops.tcav.alpha: must be in (0, 1)"),
        (dict(classes=["zebra"]), "ops.tcav.classes[0]: no class named 'zebra'"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(tmp_path, trained, change, message):
    ops = {
        "tcav": {
            "concepts": ["red", "cross"],
            "concept_source": "builtin:concepts?n=60",
            "examples_per_concept": 5,
            "random_sets": 2,
            **change,
        }
    }
    spec = demo_cnn_spec(tmp_path, trained["honest"].weights_path, "1", "builtin:shapes?split=val&n=30", ops, [LAYER])
    code, output = cli("run", spec)
    assert code == 2 and message in output, output
    if "zebra" in str(change.get("concepts")):
        assert "its concepts are: blue, brick" in output  # the names it could have meant
    assert store_is_empty(tmp_path / "reports")


def test_a_model_given_as_onnx_is_refused(tmp_path, trained):
    """TCAV needs the class logit's gradients, which an ONNX file does not give (as activation maximization)."""
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(onnx_bundle.export_torch(shapes_cnn().eval(), (3, 64, 64), [LAYER]))
    path = demo_cnn_spec(tmp_path, trained["honest"].weights_path, "1", "builtin:shapes?split=val&n=30",
                         {"tcav": {"concepts": ["red"]}}, [LAYER])  # fmt: skip
    spec = yaml.safe_load(path.read_text())
    for key in ("factory", "weights"):
        del spec["model"][key]
    spec["model"] |= {"source": "onnx", "path": str(onnx_path)}
    path.write_text(yaml.safe_dump(spec))
    code, output = cli("run", path)
    assert code == 2 and "ops.tcav: TCAV differentiates class logits" in output, output
    assert store_is_empty(tmp_path / "reports")
