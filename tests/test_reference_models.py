"""The ResNet-50 and ViT-B/16 examples (issue 18): torchvision's and timm's module names and sizes, and each
example spec's model exported to ONNX at 224 px with its audited layers as outputs, within the spec's parity
contract (``onnx.max_rel_diff``: relative to each output's scale)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from interp_audit.spec import load_spec
from interp_ops import onnx_bundle
from interp_ops.reference_models import resnet50, vit_b16

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SPECS = Path(__file__).resolve().parent.parent / "deployments" / "specs"


def test_resnet50_has_torchvisions_names_and_size():
    model = resnet50()
    names = dict(model.named_modules())
    assert {"conv1", "bn1", "layer1", "layer4.2.conv3", "layer2.0.downsample.0", "fc"} <= set(names)
    assert [len(names[f"layer{i}"]) for i in range(1, 5)] == [3, 4, 6, 3]
    assert sum(p.numel() for p in model.parameters()) == 25_557_032  # torchvision's resnet50
    assert torch.equal(resnet50().fc.weight, model.fc.weight)  # seeded


def test_vit_b16_has_timms_names_and_size():
    model = vit_b16()
    names = dict(model.named_parameters())
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.11.attn.qkv.weight", "head.weight"} <= set(
        names
    )
    assert names["pos_embed"].shape == (1, 197, 768)
    assert sum(p.numel() for p in model.parameters()) == 86_567_656  # timm's vit_base_patch16_224


@pytest.mark.slow
@pytest.mark.parametrize("spec_file", ["resnet50-example.yaml", "vit-b16-example.yaml"])
def test_the_examples_export_with_their_layers_within_the_parity_contract(spec_file):
    spec = load_spec(SPECS / spec_file).spec
    factory = {"interp_ops.reference_models:resnet50": resnet50, "interp_ops.reference_models:vit_b16": vit_b16}
    model = factory[spec.model.factory]().eval()
    layers, grids = spec.model.layer_names, spec.model.token_grids
    onnx_bytes = onnx_bundle.export_torch(model, tuple(spec.model.input.shape), layers, grids)
    x = np.random.default_rng(0).random((2, 3, 224, 224), dtype=np.float32)
    rows = onnx_bundle.parity_rows(
        [
            (
                onnx_bundle.run_torch(model, x, layers, "cpu", grids=grids),
                onnx_bundle.run_session(onnx_bundle.make_session(onnx_bytes, "cpu"), x),
            )
        ]
    )
    shapes = {row["output"]: row["shape"] for row in rows}
    if "vit" in spec_file:
        assert shapes == {"logits": [1000], "blocks.5": [768, 14, 14], "blocks.11": [768, 14, 14]}
    else:
        assert shapes == {"logits": [1000], "layer3": [1024, 14, 14], "layer4": [2048, 7, 7]}
    worst = max(row["max_rel_diff"] for row in rows)
    assert worst <= spec.contracts["onnx.max_rel_diff"], rows
