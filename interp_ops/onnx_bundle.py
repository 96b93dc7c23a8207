"""ONNX bundle: the audited model as one ONNX graph whose outputs are the logits and every audited layer.

All methods read activations from this graph through ONNX Runtime, so an exported torch model and an ONNX
file from elsewhere are audited the same way. Parity between torch and ONNX Runtime is measured here.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch

from interp_ops.layer_capture import LayerCapture
from interp_ops.token_grid import TokenGrid, TokenGridError

LOGITS = "logits"
# the exporter warns, once per process, about every torchvision operator it cannot register; we never use them
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


class OnnxBundleError(RuntimeError):
    """Export or loading failed; the message names the operator or module that failed."""


class WithLayerOutputs(torch.nn.Module):
    """Returns ``(logits, *audited layer activations)``, captured by forward hooks on only those layers, which are
    on ``model`` only inside ``with WithLayerOutputs(model, layers) as wrapper:``; token layers (``grids``) as maps."""

    def __init__(self, model: torch.nn.Module, layers: list[str], grids: Mapping[str, TokenGrid] | None = None):
        super().__init__()
        self.model = model
        self.capture = LayerCapture(model, layers, grids=grids)

    def __enter__(self) -> WithLayerOutputs:
        self.capture.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self.capture.__exit__(*exc_info)

    def forward(self, x):
        self.capture.outputs.clear()
        logits = self.model(x)
        return (logits, *[self.capture.outputs[name] for name in self.capture.layers])


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _failing_part(exc: BaseException) -> str:
    """Name the operator (conversion failures) or the user's line of code (tracing failures) that broke."""
    chain, seen = [], exc
    while seen is not None and len(chain) < 5:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    text = ANSI.sub("", "\n".join(str(e) for e in chain))
    operator = re.search(r"aten[.:]{1,2}[A-Za-z0-9_]+", text)
    if "Failed to convert" in text and operator:
        return f"operator {operator.group(0)}"
    frames = [
        f for f in re.findall(r'File "([^"]+)", line (\d+), in (\w+)\n\s*(.+)', text) if "site-packages" not in f[0]
    ]
    if frames:
        path, line, function, code = frames[-1]
        return f"`{code.strip()}` in {function} ({path.rsplit('/', 1)[-1]}:{line})"
    return f"operator {operator.group(0)}" if operator else ""


def export_torch(
    model, input_shape: tuple[int, ...], layers: list[str], grids: Mapping[str, TokenGrid] | None = None
) -> bytes:
    """Export with a dynamic batch axis and the audited layers as extra named outputs (token layers as
    ``[batch, dim, rows, cols]`` maps); returns ONNX bytes."""
    import onnx

    wrapper = WithLayerOutputs(model, layers, grids).eval()
    example = torch.zeros((2, *input_shape), dtype=torch.float32)
    batch = torch.export.Dim("batch", min=1)
    output_names = [LOGITS, *layers]
    try:
        with wrapper, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # the exporter prints progress, and on failure the whole traced graph; our error says what matters
            with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                program = torch.onnx.export(
                    wrapper,
                    (example,),
                    input_names=["input"],
                    output_names=output_names,
                    dynamic_shapes=({0: batch},),
                    external_data=False,
                    dynamo=True,
                    verbose=False,
                )
        proto = program.model_proto
        onnx.checker.check_model(proto)
        _drop_stack_traces([*proto.graph.node, *(node for function in proto.functions for node in function.node)])
    except Exception as exc:
        grid_error = _cause_of_type(exc, TokenGridError)
        if grid_error is not None:  # a token layer declared wrong: the declaration's message, not the exporter's
            raise grid_error from None
        part = _failing_part(exc)
        where = f" at {part}" if part else ""
        first = " ".join(ANSI.sub("", str(exc)).split())[:300]
        raise OnnxBundleError(
            f"ONNX export failed{where}: {type(exc).__name__}: {first}. Replace that operation with one "
            f"ONNX supports, or export the model yourself and audit it with model.source: onnx."
        ) from exc
    fixed_batch = proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value
    if fixed_batch:
        raise OnnxBundleError(
            f"ONNX export fixed the batch size at {fixed_batch}: the model's forward turns the batch dimension into "
            "a Python number (len(x), or x.size(0) passed through int()), so the graph takes no other batch size. "
            "Use x.shape[0] as it is, or export the model yourself and audit it with model.source: onnx."
        )
    return proto.SerializeToString()


def _cause_of_type(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    seen = exc
    for _ in range(10):
        if seen is None or isinstance(seen, kind):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _drop_stack_traces(nodes) -> None:
    """The exporter records, on every node, the Python stack that made it: file paths and line numbers of this
    checkout and of torch. They would make the bytes (the model's hash, every cache key built on it) depend on
    where the code is installed and on unrelated edits, so they go."""
    for node in nodes:
        kept = [prop for prop in node.metadata_props if not prop.key.endswith("stack_trace")]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
        for attribute in node.attribute:
            for subgraph in [attribute.g, *attribute.graphs]:
                _drop_stack_traces(subgraph.node)


def load_onnx_file(path: str):
    """The ONNX model in ``path``, its external weight files (as MLflow writes them) read in; OnnxBundleError when
    the file is no ONNX model. Parsing alone proves nothing: protobuf reads an empty file as an empty model, and
    some garbage as a model of unknown fields."""
    import onnx
    from google.protobuf.message import DecodeError

    name = os.path.basename(path)
    fix = "export the model to ONNX again (e.g. torch.onnx.export) and point to that file"
    if os.path.getsize(path) == 0:
        raise OnnxBundleError(f"'{name}' is empty (0 bytes), not an ONNX model; {fix}")
    try:
        model = onnx.load(path, load_external_data=True)
    except (DecodeError, ValueError) as exc:
        raise OnnxBundleError(
            f"'{name}' is not an ONNX model: it does not parse as one ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:200]}); is it truncated, or another format? {fix}"
        ) from None
    if not model.ir_version or not model.graph.node or not model.graph.output:
        raise OnnxBundleError(
            f"'{name}' is not an ONNX model: it holds no graph (IR version {model.ir_version}, "
            f"{len(model.graph.node)} nodes, {len(model.graph.output)} outputs); {fix}"
        )
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise OnnxBundleError(
            f"'{name}' is not a valid ONNX model: {' '.join(str(exc).split())[:300]}; {fix}"
        ) from None
    return model


def read_onnx(path: str) -> bytes:
    """An ONNX file as one serialized model, its external weight files (as MLflow writes them) read in."""
    return load_onnx_file(path).SerializeToString()


def graph_tensor_names(model) -> list[str]:
    """Every intermediate tensor an ONNX graph computes, in node order."""
    names = []
    for node in model.graph.node:
        names.extend(out for out in node.output if out)
    return names


def expose_tensors(onnx_bytes: bytes, tensors: list[str], grids: Mapping[str, TokenGrid] | None = None) -> bytes:
    """Return the graph with the named intermediate tensors added as outputs after its first output; a token
    tensor with a grid in ``grids`` is output as its ``[batch, dim, rows, cols]`` map, under its own name."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    for name, grid in (grids or {}).items():
        if name in tensors:
            _tokens_as_map(model.graph, name, grid)
    inferred = onnx.shape_inference.infer_shapes(model)
    known = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    first = model.graph.output[0]
    del model.graph.output[:]
    model.graph.output.append(first)
    for name in tensors:
        info = known.get(name)
        if info is None:
            elem_type = onnx.TensorProto.FLOAT
            info = onnx.helper.make_tensor_value_info(name, elem_type, None)
        model.graph.output.append(info)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _tokens_as_map(graph, name: str, grid: TokenGrid) -> None:
    """Rename the token tensor ``name`` to ``name/tokens`` and compute ``name`` from it as the map
    ``Transpose(Reshape(Slice(tokens, skip..), [batch, rows, cols, dim]), [0, 3, 1, 2])``, as the torch export does."""
    import onnx
    from onnx import helper

    tokens = f"{name}/tokens"
    for node in graph.node:
        node.input[:] = [tokens if value == name else value for value in node.input]
        node.output[:] = [tokens if value == name else value for value in node.output]
    for info in graph.value_info:
        if info.name == name:
            info.name = tokens
    constants = {
        f"{name}/skip": [grid.skip],
        f"{name}/end": [2**62],
        f"{name}/axis": [1],
        f"{name}/grid": [0, grid.rows, grid.cols, -1],  # 0: the batch as it is; -1: dim
    }
    graph.initializer.extend(
        helper.make_tensor(key, onnx.TensorProto.INT64, [len(value)], value) for key, value in constants.items()
    )
    graph.node.extend(
        [
            helper.make_node("Slice", [tokens, f"{name}/skip", f"{name}/end", f"{name}/axis"], [f"{name}/patches"]),
            helper.make_node("Reshape", [f"{name}/patches", f"{name}/grid"], [f"{name}/grid_last"]),
            helper.make_node("Transpose", [f"{name}/grid_last"], [name], perm=[0, 3, 1, 2]),
        ]
    )


def onnx_sha256(onnx_bytes: bytes) -> str:
    return hashlib.sha256(onnx_bytes).hexdigest()


def cuda_usable() -> bool:
    return torch.cuda.is_available()


def session_providers(device: str) -> list[str]:
    """Ask for CUDA only when it is really usable; otherwise ONNX Runtime logs errors."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device.startswith("cuda") and cuda_usable() and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def make_session(onnx_bytes: bytes, device: str, intra_op_threads: int = 0):
    """``intra_op_threads``: 0 lets ONNX Runtime choose (a thread per physical core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = intra_op_threads
    options.enable_cpu_mem_arena = False
    try:
        return ort.InferenceSession(onnx_bytes, sess_options=options, providers=session_providers(device))
    except Exception as exc:
        raise OnnxBundleError(f"ONNX Runtime could not load the model: {' '.join(str(exc).split())[:500]}") from exc


def run_session(
    session, x: np.ndarray, batch_size: int = 256, outputs: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """The ``outputs`` (all when None) for all samples, batched; the first graph output is called ``logits``. ``x``
    is read a batch at a time (a ``SampleFile`` stays on disk); only the outputs asked for are computed and kept."""
    input_name = session.get_inputs()[0].name
    names = [out.name for out in session.get_outputs()]
    graph_name = dict(zip([LOGITS, *names[1:]], names))
    keys = list(graph_name) if outputs is None else list(outputs)
    chunks: dict[str, list[np.ndarray]] = {key: [] for key in keys}
    for start in range(0, len(x), batch_size):
        batch = np.asarray(x[start : start + batch_size], dtype=np.float32)
        for key, value in zip(keys, session.run([graph_name[key] for key in keys], {input_name: batch})):
            chunks[key].append(value)
    return {key: np.concatenate(parts) for key, parts in chunks.items()}


def run_torch(
    model,
    x: np.ndarray,
    layers: list[str],
    device: str,
    batch_size: int = 256,
    grids: Mapping[str, TokenGrid] | None = None,
) -> dict[str, np.ndarray]:
    """The same outputs as :func:`run_session`, computed by torch, for parity."""
    wrapper = WithLayerOutputs(model, layers, grids).eval().to(device)
    chunks: dict[str, list[np.ndarray]] = {key: [] for key in (LOGITS, *layers)}
    with wrapper, torch.no_grad():
        for start in range(0, len(x), batch_size):
            # a copy: x may be read-only (memory-mapped, or from Ray's object store), which torch cannot wrap
            batch = torch.tensor(x[start : start + batch_size], device=device)
            for key, value in zip(chunks, wrapper(batch)):
                chunks[key].append(value.float().cpu().numpy())
    return {key: np.concatenate(parts) for key, parts in chunks.items()}


def parity_rows(batches: Iterable[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]) -> list[dict]:
    """Per output: max abs diff, max diff relative to the output's scale (its largest magnitude), and per-sample
    argmax agreement, over (torch, ONNX Runtime) output pairs of successive batches: one batch in memory at a time."""
    tallies: dict[str, dict] = {}
    for reference, candidate in batches:
        for name, ref in reference.items():
            got = candidate[name]
            if ref.shape != got.shape:
                raise OnnxBundleError(
                    f"parity: output '{name}' has shape {got.shape} in ONNX Runtime but {ref.shape} in torch"
                )
            tally = tallies.setdefault(
                name, {"shape": list(ref.shape[1:]), "diff": 0.0, "scale": 0.0, "agree": 0, "n": 0}
            )
            if ref.size:
                tally["diff"] = max(tally["diff"], float(np.abs(ref.astype(np.float64) - got.astype(np.float64)).max()))
                tally["scale"] = max(tally["scale"], float(np.abs(ref).max()))
            flat_ref, flat_got = ref.reshape(len(ref), -1), got.reshape(len(got), -1)
            tally["agree"] += int((flat_ref.argmax(1) == flat_got.argmax(1)).sum()) if len(ref) else 0
            tally["n"] += len(ref)
    return [
        {
            "output": name,
            "shape": tally["shape"],
            "max_abs_diff": tally["diff"],
            "max_rel_diff": tally["diff"] / tally["scale"] if tally["scale"] > 0 else 0.0,
            "argmax_agreement": tally["agree"] / tally["n"] if tally["n"] else 1.0,
        }
        for name, tally in tallies.items()
    ]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)
