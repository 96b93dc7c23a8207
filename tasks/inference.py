"""Tasks that run the model: torch/ONNX Runtime parity and per-sample predictions."""

from __future__ import annotations

import numpy as np
from prefect import task

from interp_audit.blobs import materialized, materialized_inputs
from interp_audit.inputs import ModelInputs
from interp_audit.intake import ModelRef, build_torch_model
from interp_ops import onnx_bundle
from interp_ops.sample_file import row_batches
from interp_ops.token_grid import TokenGrid
from tasks import CACHED, UNCACHED
from tasks.gpu import compute_share


@task(name="onnx-parity", **CACHED)
def check_parity(
    model: ModelRef,
    onnx_bytes: bytes,
    inputs: ModelInputs,
    layers: list[str],
    grids: dict[str, TokenGrid],
    device: str,
) -> list[dict]:
    """Max abs/rel diff and argmax agreement between torch and ONNX Runtime, per output, a batch at a time."""
    onnx_bytes, inputs = materialized(onnx_bytes), materialized_inputs(inputs)
    with compute_share(device) as threads:
        torch_model = build_torch_model(model)
        session = onnx_bundle.make_session(onnx_bytes, device, threads)
        return onnx_bundle.parity_rows(
            (
                onnx_bundle.run_torch(torch_model, batch, layers, device, grids=grids),
                onnx_bundle.run_session(session, batch),
            )
            for batch in row_batches(inputs.x)
        )


@task(name="predict", **CACHED)
def predict(onnx_bytes: bytes, inputs: ModelInputs, device: str) -> list[dict]:
    """The model's decision on every sample, through the same ONNX graph the methods use."""
    onnx_bytes, inputs = materialized(onnx_bytes), materialized_inputs(inputs)
    with compute_share(device) as threads:
        session = onnx_bundle.make_session(onnx_bytes, device, threads)
        logits = onnx_bundle.run_session(session, inputs.x, outputs=[onnx_bundle.LOGITS])[onnx_bundle.LOGITS]
    probabilities = onnx_bundle.softmax(logits.astype(np.float64))
    predicted = probabilities.argmax(axis=1)
    names = inputs.class_names

    def name(index):
        return names[index] if names is not None and 0 <= index < len(names) else None

    rows = []
    for i, sample_id in enumerate(inputs.ids):
        label = int(inputs.labels[i]) if inputs.labels is not None else None
        rows.append(
            {
                "sample_id": sample_id,
                "label": label,
                "label_name": name(label) if label is not None else None,
                "predicted": int(predicted[i]),
                "predicted_name": name(int(predicted[i])),
                "probability": float(probabilities[i, predicted[i]]),
                "correct": bool(label == predicted[i]) if label is not None else None,
            }
        )
    return rows


@task(name="ort-providers", **UNCACHED)
def ort_providers(onnx_bytes: bytes, device: str) -> list[str]:
    """The providers ONNX Runtime really uses on this machine, for the reproducibility record.

    Uncached: a fact of the machine that runs this audit (a cached answer could name another machine's GPU),
    and cheap."""
    return onnx_bundle.make_session(onnx_bytes, device).get_providers()
