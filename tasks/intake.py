"""Model intake tasks: the ONNX bundle and the model-ready samples."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from interp_audit.inputs import ModelInputs, model_inputs
from interp_audit.intake import ModelRef, build_torch_model
from interp_audit.spec import InputSpec
from interp_ops import onnx_bundle
from interp_ops.token_grid import TokenGrid
from tasks import CACHED, UNCACHED


@task(name="export-onnx", **CACHED)
def export_onnx(model: ModelRef, input_shape: tuple[int, ...], layers: list[str], grids: dict[str, TokenGrid]) -> bytes:
    """ONNX bytes whose outputs are the logits and the audited layers, token layers as maps (torch export, or an
    ONNX file with those tensors exposed)."""
    if model.source == "onnx":
        return onnx_bundle.expose_tensors(onnx_bundle.read_onnx(model.path), layers, grids)
    return onnx_bundle.export_torch(build_torch_model(model), input_shape, layers, grids)


@task(name="load-samples", **UNCACHED)
def load_model_inputs(data_uri: str, base_dir: str, data_sha256: str, seed: int, input_spec: InputSpec) -> ModelInputs:
    """Every sample converted to the model's input, the run's one read of the data set (preflight reads a probe).

    Uncached by Prefect: the converted samples live in a file of their own cache, keyed by ``data_sha256`` (the
    data's content), which a re-run reads again (a cached result could outlive the file it names)."""
    return model_inputs(data_uri, Path(base_dir), data_sha256, seed, input_spec)
