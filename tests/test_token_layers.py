"""Transformer token layers (issue 18): a layer declared with ``tokens: {grid, skip}`` is read everywhere as its
``dim x rows x cols`` map; undeclared or mis-declared token outputs are refused with exit 2.

Ground truth: the planted ViT (tests/assets/token_models.py) carries each patch's mean of R - G - B in dim 0 of
every block, so its maps are computed here from the pixels alone, dissection must find "red" there, and
activation maximization must render red. An ONNX graph written with onnx.helper (no torch) checks the ONNX side.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml
from conftest import ASSETS, save_state_dict, store_is_empty
from onnx import TensorProto, helper
from PIL import Image
from token_models import IMAGE, PATCH, RED_DIM, planted_vit, vit_without_class_token
from typer.testing import CliRunner

from flows.cli import app
from interp_audit import report
from interp_audit.spec import parse_spec
from interp_ops import onnx_bundle
from interp_ops.actmax import render_units
from interp_ops.concepts import load_concepts, write_builtin_concepts
from interp_ops.dissection import dissect
from interp_ops.layer_capture import LayerCapture
from interp_ops.token_grid import TokenGrid, TokenGridError

pytestmark = pytest.mark.usefixtures("one_torch_thread")
GRID = IMAGE // PATCH  # 12
PLANTED_GRIDS = {"blocks.0": TokenGrid(GRID, GRID, skip=1), "blocks.1": TokenGrid(GRID, GRID, skip=1)}
runner = CliRunner()


def cli(*args) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, " ".join(result.output.split())


def patch_red(x: np.ndarray) -> np.ndarray:
    """Each patch's mean of R - G - B, ``[batch, rows, cols]``, computed from the pixels."""
    signal = x[:, 0] - x[:, 1] - x[:, 2]
    return signal.reshape(len(x), GRID, PATCH, GRID, PATCH).mean(axis=(2, 4))


@pytest.fixture(scope="module")
def planted():
    model = planted_vit().eval()
    onnx_bytes = onnx_bundle.export_torch(model, (3, IMAGE, IMAGE), list(PLANTED_GRIDS), PLANTED_GRIDS)
    return model, onnx_bundle.make_session(onnx_bytes, "cpu")


# --- the spec --------------------------------------------------------------------------------------------------


def spec_text(layers) -> str:
    return yaml.safe_dump(
        {
            "name": "vit",
            "model": {
                "source": "onnx",
                "name": "m",
                "version": "1",
                "path": "m.onnx",
                "input": {"shape": [3, IMAGE, IMAGE]},
                "layers": layers,
            },
            "data": "builtin:shapes",
        }
    )


def test_the_spec_reads_names_and_token_layers_side_by_side():
    layers = ["patch_embed", {"name": "blocks.6", "tokens": {"grid": [14, 14], "skip": 1}}]
    model = parse_spec(spec_text(layers), Path(".")).spec.model
    assert model.layer_names == ["patch_embed", "blocks.6"]
    assert model.token_grids == {"blocks.6": TokenGrid(14, 14, skip=1)}
    tokens_only = parse_spec(spec_text([{"name": "t", "tokens": {"grid": [4, 2]}}]), Path(".")).spec.model
    assert tokens_only.token_grids == {"t": TokenGrid(4, 2, skip=0)}


# --- torch: export, parity, the map itself -------------------------------------------------------------------


def test_token_layers_export_as_maps_equal_to_the_tokens_and_to_the_planted_truth(planted):
    model, session = planted
    x = np.random.default_rng(0).random((5, 3, IMAGE, IMAGE), dtype=np.float32)
    outputs = onnx_bundle.run_session(session, x)
    assert outputs["blocks.0"].shape == (5, 8, GRID, GRID) and outputs["blocks.1"].shape == (5, 8, GRID, GRID)

    with torch.no_grad(), LayerCapture(model, ["blocks.1"]) as raw:
        model(torch.from_numpy(x))
    tokens = raw.outputs["blocks.1"].numpy()  # [5, 1 + 144, 8], the class token first
    assert tokens.shape == (5, 1 + GRID * GRID, 8)
    by_hand = tokens[:, 1:, :].reshape(5, GRID, GRID, 8).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(outputs["blocks.1"], by_hand, atol=1e-5)
    np.testing.assert_allclose(outputs["blocks.1"][:, RED_DIM], patch_red(x), atol=1e-5)

    reference = onnx_bundle.run_torch(model, x, list(PLANTED_GRIDS), "cpu", grids=PLANTED_GRIDS)
    rows = onnx_bundle.parity_rows([(reference, outputs)])
    assert {row["output"]: row["shape"] for row in rows} == {
        "logits": [3],
        "blocks.0": [8, GRID, GRID],
        "blocks.1": [8, GRID, GRID],
    }
    assert max(row["max_abs_diff"] for row in rows) < 1e-4


def test_patch_tokens_without_a_class_token_and_a_grid_that_does_not_fit():
    model = vit_without_class_token().eval()
    grid = {"blocks.0": TokenGrid(4, 4)}
    session = onnx_bundle.make_session(onnx_bundle.export_torch(model, (3, 32, 32), ["blocks.0"], grid), "cpu")
    x = np.random.default_rng(1).random((2, 3, 32, 32), dtype=np.float32)
    assert onnx_bundle.run_session(session, x)["blocks.0"].shape == (2, 12, 4, 4)
    with pytest.raises(
        TokenGridError, match=r"\[4, 4\] is 16 patch tokens, but 'blocks.0' outputs 16 tokens .* skip is 1"
    ):
        onnx_bundle.export_torch(model, (3, 32, 32), ["blocks.0"], {"blocks.0": TokenGrid(4, 4, skip=1)})


# --- dissection and activation maximization find what was planted -----------------------------------------------


def test_dissection_finds_the_planted_red_dim_of_a_token_layer(planted, tmp_path):
    _, session = planted
    concepts = load_concepts(str(write_builtin_concepts(tmp_path / "concepts", 300, IMAGE, 0)))
    results = dissect(session, concepts, list(PLANTED_GRIDS), input_shape=(3, IMAGE, IMAGE), quantile=0.01)
    for layer in PLANTED_GRIDS:
        result = results[layer]
        assert result.iou.shape[0] == 8  # units are the token dims
        assert concepts.labels[int(result.best_label[RED_DIM])] == "red", layer
        assert result.best_iou[RED_DIM] >= 0.2, (layer, result.best_iou[RED_DIM])


def test_activation_maximization_renders_the_planted_red_dim_red(planted):
    model, _ = planted
    renders = render_units(
        model,
        "blocks.1",
        [RED_DIM, 1],
        input_shape=(3, IMAGE, IMAGE),
        steps=256,
        seed=0,
        grid=PLANTED_GRIDS["blocks.1"],
    )
    assert renders.images.shape == (2, 3, IMAGE, IMAGE)
    red, green, blue = renders.images[0].mean(axis=(1, 2))
    assert red > green + 0.3 and red > blue + 0.3, (red, green, blue)
    # the objective is the dim's mean over the patch tokens: for the planted dim, the render's mean R - G - B
    image = renders.images[:1].astype(np.float32)
    assert renders.final_activation[0] == pytest.approx(float(patch_red(image).mean()), rel=1e-3)


# --- an ONNX graph written without torch ---------------------------------------------------------------------------


def token_graph(path: Path) -> Path:
    """input [N, 3, 8, 8] -> 4x4 patches embedded to dim 5 -> tokens [N, 4, 5] -> a zero token in front:
    "encoder/tokens" [N, 5, 5] -> mean over tokens -> logits [N, 3]."""
    rng = np.random.default_rng(2)
    weights = {
        "embed_w": rng.normal(size=(5, 3, 4, 4)).astype(np.float32),
        "head_w": rng.normal(size=(5, 3)).astype(np.float32),
        "to_tokens": np.array([0, 5, 4], dtype=np.int64),
        "front": np.array([0, 1, 0, 0, 0, 0], dtype=np.int64),
        "token_axis": np.array([1], dtype=np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["input", "embed_w"], ["patches"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Reshape", ["patches", "to_tokens"], ["flat"]),
        helper.make_node("Transpose", ["flat"], ["patch_tokens"], perm=[0, 2, 1]),
        helper.make_node("Pad", ["patch_tokens", "front"], ["encoder/tokens"]),
        helper.make_node("ReduceMean", ["encoder/tokens", "token_axis"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "head_w"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tokens",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [onnx.numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_a_token_tensor_of_an_onnx_file_is_exposed_as_its_map(tmp_path):
    path = token_graph(tmp_path / "tokens.onnx")
    raw = onnx_bundle.read_onnx(str(path))
    x = np.random.default_rng(3).random((4, 3, 8, 8), dtype=np.float32)
    patches = onnx_bundle.run_session(onnx_bundle.make_session(onnx_bundle.expose_tensors(raw, ["patches"]), "cpu"), x)
    grid = {"encoder/tokens": TokenGrid(2, 2, skip=1)}
    exposed = onnx_bundle.expose_tensors(raw, ["encoder/tokens"], grid)
    outputs = onnx_bundle.run_session(onnx_bundle.make_session(exposed, "cpu"), x)
    np.testing.assert_allclose(outputs["encoder/tokens"], patches["patches"], atol=1e-5)  # [4, 5, 2, 2]
    np.testing.assert_allclose(outputs["logits"], patches["logits"], atol=1e-6)  # the model itself is unchanged


# --- refusals: exit 2, the shape, the key to add, nothing written -------------------------------------------------


@pytest.fixture
def vit_spec(tmp_path):
    weights = save_state_dict(planted_vit(), tmp_path / "vit.pt")

    def write(layers, **ops) -> Path:
        spec = {
            "name": "vit-audit",
            "model": {
                "source": "torch",
                "name": "planted-vit",
                "version": "1",
                "factory": f"{ASSETS / 'token_models.py'}:planted_vit",
                "weights": weights.name,
                "input": {"shape": [3, IMAGE, IMAGE], "mean": [0.5] * 3, "std": [0.25] * 3},
                "layers": layers,
            },
            "data": "builtin:shapes?split=val&n=6",
            "ops": ops,
            "report": {"store": str(tmp_path / "reports")},
        }
        path = tmp_path / "spec.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path

    return write


@pytest.mark.parametrize(
    "layers, message",
    [
        (
            ["patch_embed.proj", "blocks.1"],
            "model.layers[1]: 'blocks.1' outputs [batch, 145, 8], which reads as 145 tokens of dim 8 (a transformer "
            "layer); say how its tokens lie: {name: blocks.1, tokens: {grid: [rows, cols], skip: leading non-patch "
            "tokens}} (for a square grid: tokens: {grid: [12, 12], skip: 1})",
        ),
        (
            [{"name": "blocks.0", "tokens": {"grid": [12, 12]}}],
            "model.layers[0].tokens.grid: [12, 12] is 144 patch tokens, but 'blocks.0' outputs 145 tokens of dim 8 "
            "and skip is 0 (145 left)",
        ),
        (
            [{"name": "patch_embed.proj", "tokens": {"grid": [12, 12]}}],
            "model.layers[0].tokens.grid: 'patch_embed.proj' outputs [8, 12, 12] per sample, not [tokens, dim]",
        ),
        (
            [{"name": "blocks.0", "tokens": {"grid": [12, 0], "skip": 1}}],
            "model.layers[0].tokens.grid[1]: must be a positive integer (got 0)",
        ),
    ],
)
def test_token_outputs_undeclared_or_mis_declared_are_refused(vit_spec, tmp_path, layers, message):
    code, output = cli("validate", vit_spec(layers))
    assert code == 2 and message in output, output
    assert store_is_empty(tmp_path / "reports")


# --- the whole audit on the planted ViT ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_an_audit_of_a_vit_dissects_and_renders_its_token_layers(vit_spec, tmp_path):
    token_layers = [{"name": name, "tokens": {"grid": [GRID, GRID], "skip": 1}} for name in PLANTED_GRIDS]
    spec = vit_spec(
        token_layers,
        lime={"samples": 2, "num_samples": 200, "segmentation": {"method": "slic", "n_segments": 12}},
        activation_max={"layers": ["blocks.1"], "units": [RED_DIM, 1], "steps": 256},
        dissection={"concepts": f"builtin:concepts?n=200&size={IMAGE}", "quantile": 0.01},
    )
    code, output = cli("run", spec)
    assert code == 0, output
    store = tmp_path / "reports"
    parity = report.load_table(store, "onnx_parity").set_index("output")
    assert list(parity.loc["blocks.1", "shape"]) == [8, GRID, GRID] and parity.max_abs_diff.max() < 1e-4
    units = report.load_table(store, "dissection_units").set_index(["layer", "unit"])
    assert len(units) == 16  # two layers of 8 dims
    for layer in PLANTED_GRIDS:
        assert units.loc[(layer, RED_DIM), "concept"] == "red" and units.loc[(layer, RED_DIM), "is_detector"]
    renders = report.load_table(store, "actmax_units").set_index("unit")
    image = np.asarray(Image.open(io.BytesIO(renders.loc[RED_DIM, "render_png"])), dtype=np.float64) / 255
    red, green, blue = image.reshape(-1, 3).mean(axis=0)
    assert red > green + 0.3 and red > blue + 0.3, (red, green, blue)
    assert renders.loc[RED_DIM, "objective"].startswith("channel(blocks.1")
