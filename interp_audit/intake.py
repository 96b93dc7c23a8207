"""Model intake: build the user's torch module (or read their ONNX file) safely, and check it against the spec.

Weights are loaded with ``torch.load(weights_only=True)`` or safetensors, so a weights file can never run code
unless the spec says ``trust_pickle: true``. Every failure here is bad input (exit 2) and happens before any
work is done.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from interp_audit import registry
from interp_audit.errors import SpecError
from interp_audit.hashing import sha256_file
from interp_audit.mlflow_connection import default_tracking_uri
from interp_audit.sklearn_models import converted_model
from interp_audit.spec import (
    FACTORY_REF,
    InputSpec,
    LoadedSpec,
    MlflowModelSpec,
    OnnxModelSpec,
    SklearnModelSpec,
    TorchModelSpec,
)
from interp_ops.cache_dirs import cache_dir
from interp_ops.token_grid import TokenGridError, suggested_grid

MAX_LISTED = 40


@dataclass(frozen=True)
class ModelRef:
    """Everything needed to rebuild the model in another process; small and hashable for task cache keys."""

    source: str
    path: str  # weights file (torch) or .onnx file (onnx), absolute
    sha256: str
    factory: str | None
    trust_pickle: bool
    base_dir: str
    version: str  # the version the report records: a registry's resolved number, never 'latest' or an alias


def resolve_model(loaded: LoadedSpec, store: str | None = None) -> ModelRef:
    """The model file the audit reads; a registry version is resolved and downloaded first."""
    model = loaded.spec.model
    if isinstance(model, MlflowModelSpec):
        return registry_model(model, store or loaded.spec.report.store, str(loaded.base_dir))
    if isinstance(model, SklearnModelSpec):
        return sklearn_model(model, loaded.base_dir)
    relative = model.weights if isinstance(model, TorchModelSpec) else model.path
    key = "model.weights" if isinstance(model, TorchModelSpec) else "model.path"
    path = (loaded.base_dir / relative).resolve()
    if not path.is_file():
        raise SpecError(
            f"{key}: file '{relative}' does not exist (resolved to {path}); "
            f"paths are relative to the spec file's folder"
        )
    return ModelRef(
        source=model.source,
        path=str(path),
        sha256=sha256_file(path),
        factory=getattr(model, "factory", None),
        trust_pickle=getattr(model, "trust_pickle", False),
        base_dir=str(loaded.base_dir),
        version=model.version,
    )


def sklearn_model(model: SklearnModelSpec, base_dir: Path) -> ModelRef:
    """The skops file read safely and converted to ONNX; the audit then reads it as an ONNX model whose
    identity (cache keys, ``weights_sha256``) is the skops file's content."""
    path = (base_dir / model.path).resolve()
    if not path.is_file():
        raise SpecError(
            f"model.path: file '{model.path}' does not exist (resolved to {path}); paths are relative to the "
            "spec file's folder"
        )
    onnx_path, digest = converted_model(path, model.trusted, model.input.shape[0])
    return ModelRef(
        source="onnx",
        path=str(onnx_path),
        sha256=digest,
        factory=None,
        trust_pickle=False,
        base_dir=str(base_dir),
        version=model.version,
    )


def tracking_uri(model: MlflowModelSpec, store: str) -> str:
    """The spec's registry, else MLFLOW_TRACKING_URI, else a SQLite registry inside the report store."""
    return model.tracking_uri or default_tracking_uri(store)


def registry_model(model: MlflowModelSpec, store: str, base_dir: str) -> ModelRef:
    """Resolve the spec's version ('latest', '@alias' or a number) and download it into a local cache."""
    uri = tracking_uri(model, store)
    version = registry.resolve_version(uri, model.name, model.version)
    key = hashlib.sha256(f"{uri}\0{model.name}\0{version}".encode()).hexdigest()[:16]
    cache = cache_dir("mlflow") / key
    fetched = registry.fetch_model(uri, model.name, version, cache, model.trust_pickle)
    factory = fetched.factory or model.factory
    if fetched.kind == "state_dict" and factory is None:
        raise SpecError(
            f"model.factory: {model.name} v{version} holds a state dict that does not say which module it "
            "loads into; give model.factory (or register versions with interp_audit.registry.log_model)"
        )
    return ModelRef(
        source="onnx" if fetched.kind == "onnx" else "torch",
        path=fetched.path,
        sha256=fetched.sha256,
        factory=factory,
        trust_pickle=model.trust_pickle,
        base_dir=base_dir,
        version=version,
    )


def import_factory(ref: str, base_dir: Path):
    match = FACTORY_REF.match(ref)
    target, attr = match["target"], match["attr"]
    try:
        if target.endswith(".py"):
            file = (base_dir / target).resolve()
            if not file.is_file():
                raise SpecError(f"model.factory: file '{target}' does not exist (resolved to {file})")
            module_name = "interp_audit_factory_" + hashlib.sha256(str(file).encode()).hexdigest()[:12]
            module_spec = importlib.util.spec_from_file_location(module_name, file)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_name] = module
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except SpecError:
        raise
    except Exception as exc:  # the user's module failed to import: show why
        raise SpecError(f"model.factory: importing '{target}' failed: {type(exc).__name__}: {exc}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SpecError(
                f"model.factory: '{target}' has no attribute '{attr}'; "
                f"give 'module:callable' naming a function that returns the torch module"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise SpecError(f"model.factory: '{ref}' is not callable")
    return obj


def _load_weights(path: Path, trust_pickle: bool):
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise SpecError(f"model.weights: '{path.name}' is not a readable safetensors file ({exc})") from None
    if path.suffix not in (".pt", ".pth", ".bin"):
        raise SpecError(
            f"model.weights: unsupported file type '{path.suffix}'; give a state dict as .pt/.pth or .safetensors"
        )
    if trust_pickle:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first_line = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else ""
        raise SpecError(
            f"model.weights: '{path.name}' is not a plain state dict: it holds pickled Python objects that "
            f"could run code when loaded ({first_line}). Save `model.state_dict()` (or use .safetensors) "
            f"instead, or set model.trust_pickle: true if you trust this file."
        ) from None
    except Exception as exc:
        raise SpecError(f"model.weights: could not read '{path.name}': {type(exc).__name__}: {exc}") from None


def build_torch_model(ref: ModelRef):
    """Return the eval-mode module on CPU with its weights loaded."""
    import torch

    weights = _load_weights(Path(ref.path), ref.trust_pickle)
    if isinstance(weights, torch.nn.Module):
        return weights.eval()
    if not isinstance(weights, dict):
        raise SpecError(
            f"model.weights: expected a state dict (a mapping of names to tensors), found {type(weights).__name__}"
        )
    if ref.factory is None:
        raise SpecError("model.factory: required, because the weights file is a state dict")
    module = import_factory(ref.factory, Path(ref.base_dir))()
    if not isinstance(module, torch.nn.Module):
        raise SpecError(f"model.factory: '{ref.factory}' returned {type(module).__name__}, not a torch.nn.Module")
    try:
        module.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:800]
        raise SpecError(
            f"model.weights: the weights do not fit the module built by '{ref.factory}': {detail}. "
            f"Check that factory and weights belong to the same architecture."
        ) from None
    return module.eval()


def check_layers(names: list[str], available: list[str], what: str) -> None:
    for index, name in enumerate(names):
        if name not in available:
            shown = ", ".join(available[:MAX_LISTED]) + (", ..." if len(available) > MAX_LISTED else "")
            raise SpecError(f"model.layers[{index}]: no {what} '{name}' in the model; {what}s are: {shown}")


def check_outputs(logits: np.ndarray, batch: int, input_spec: InputSpec, ids: list[str] | None = None) -> int:
    """The audit needs one score per class per sample, all finite; returns the number of classes."""
    if logits.ndim != 2 or logits.shape[0] != batch:
        raise SpecError(
            f"model: output has shape {tuple(logits.shape)} for a batch of {batch}; an audited model must "
            f"return class scores of shape (batch, classes)"
        )
    names = input_spec.class_names
    if names is not None and logits.shape[1] != len(names):
        raise SpecError(
            f"model.input.class_names: {len(names)} names given but the model outputs {logits.shape[1]} "
            f"classes; give one name per output"
        )
    bad = ~np.isfinite(logits).all(axis=1)
    if bad.any():
        which = [ids[i] for i in np.flatnonzero(bad)[:5]] if ids else np.flatnonzero(bad)[:5].tolist()
        raise SpecError(
            f"model: outputs NaN or Inf for {int(bad.sum())} of {batch} samples (e.g. {which}); check the "
            f"weights and the input normalization (model.input.range/mean/std)"
        )
    return logits.shape[1]


def torch_layer_names(module) -> list[str]:
    return [name for name, _ in module.named_modules() if name]


LayerShapes = dict[str, tuple[int, ...]]
"""Audited layer -> the shape of its output for one sample, e.g. (64, 8, 8)."""


def check_torch_model(module, spec: TorchModelSpec, x: np.ndarray, ids: list[str]) -> tuple[int, LayerShapes]:
    """Runs the probe batch; returns the number of classes and the audited layers' output shapes."""
    import torch

    from interp_ops.onnx_bundle import WithLayerOutputs

    check_layers(spec.layer_names, torch_layer_names(module), "layer")
    try:
        with torch.no_grad(), WithLayerOutputs(module, spec.layer_names) as wrapper:
            out, *layers = wrapper(torch.from_numpy(x))
    except Exception as exc:
        raise SpecError(
            f"model: forward pass on input of shape {tuple(x.shape)} failed: {type(exc).__name__}: {exc}; "
            f"check model.input.shape"
        ) from None
    if not isinstance(out, torch.Tensor):
        raise SpecError(f"model: forward returned {type(out).__name__}; it must return one tensor of class scores")
    shapes = {name: tuple(value.shape[1:]) for name, value in zip(spec.layer_names, layers)}
    return check_outputs(out.numpy(), len(x), spec.input, ids), audited_shapes(spec, shapes)


def check_onnx_model(onnx_bytes: bytes, spec: OnnxModelSpec, x: np.ndarray, ids: list[str]) -> tuple[int, LayerShapes]:
    """As check_torch_model, through ONNX Runtime (layers are graph tensors exposed as outputs)."""
    from interp_ops.onnx_bundle import make_session, run_session

    try:
        session = make_session(onnx_bytes, "cpu")
        outputs = run_session(session, x, batch_size=len(x))
        single = run_session(session, x[:1], batch_size=1)
    except Exception as exc:
        raise SpecError(
            f"model: ONNX Runtime could not run the model on input of shape {tuple(x.shape)}: "
            f"{' '.join(str(exc).split())[:400]}; check model.input.shape"
        ) from None
    for index, name in enumerate(spec.layer_names):
        whole, alone = outputs[name].shape, single[name].shape
        if whole[0] != len(x) or alone[0] != 1 or whole[1:] != alone[1:]:
            raise SpecError(
                f"model.layers[{index}]: tensor {name!r} has no fixed shape per sample: {list(alone)} for 1 sample, "
                f"{list(whole)} for {len(x)}; audit a tensor whose first dimension is the batch and whose other "
                "dimensions do not change with it"
            )
    shapes = {name: tuple(outputs[name].shape[1:]) for name in spec.layer_names}
    return check_outputs(outputs["logits"], len(x), spec.input, ids), audited_shapes(spec, shapes)


def audited_shapes(spec: TorchModelSpec | OnnxModelSpec | MlflowModelSpec, shapes: LayerShapes) -> LayerShapes:
    """Each layer's output shape as the methods read it: token layers as their ``(dim, rows, cols)`` map. A layer
    that outputs tokens (``[batch, tokens, dim]``) without a declared grid is refused: read as channels, its
    units would be tokens and its maps one-dimensional."""
    grids, audited = spec.token_grids, {}
    for index, name in enumerate(spec.layer_names):
        shape = shapes[name]
        if name in grids:
            try:
                audited[name] = grids[name].map_shape(name, shape)
            except TokenGridError as exc:
                raise SpecError(f"model.layers[{index}].tokens.grid: {exc}") from None
        elif len(shape) == 2:
            raise SpecError(
                f"model.layers[{index}]: {name!r} outputs [batch, {shape[0]}, {shape[1]}], which reads as "
                f"{shape[0]} tokens of dim {shape[1]} (a transformer layer); say how its tokens lie: "
                f"{{name: {name}, tokens: {{grid: [rows, cols], skip: leading non-patch tokens}}}} "
                f"({suggested_grid(shape[0])})"
            )
        else:
            audited[name] = shape
    return audited


def check_model(
    ref: ModelRef, spec: TorchModelSpec | OnnxModelSpec | MlflowModelSpec, x: np.ndarray, ids: list[str]
) -> tuple[int, LayerShapes]:
    """The model run on the probe batch ``x``: a torch module built from its weights, or the ONNX file with the
    audited layers exposed as outputs. Returns the number of classes and the audited layers' output shapes."""
    if ref.source == "torch":
        return check_torch_model(build_torch_model(ref), spec, x, ids)
    return _check_onnx_file(ref, spec, x, ids)


def _check_onnx_file(
    ref: ModelRef, spec: OnnxModelSpec | MlflowModelSpec, x: np.ndarray, ids: list[str]
) -> tuple[int, LayerShapes]:
    """The layers named in the spec must be tensors of the graph; the model is then run as check_onnx_model runs it."""
    from interp_ops.onnx_bundle import OnnxBundleError, expose_tensors, graph_tensor_names, load_onnx_file

    try:
        model = load_onnx_file(ref.path)
    except (OnnxBundleError, OSError) as exc:
        raise SpecError(f"model.path: {exc}") from None
    check_layers(spec.layer_names, graph_tensor_names(model), "tensor")
    return check_onnx_model(expose_tensors(model.SerializeToString(), spec.layer_names), spec, x, ids)
