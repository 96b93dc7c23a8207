"""Unit-ablation task: one per ablated layer, on the audit's ONNX graph cut at the layer (``interp_ops.ablation``)."""

from __future__ import annotations

from prefect import task

from interp_audit.blobs import materialized, materialized_inputs
from interp_audit.errors import SpecError
from interp_audit.inputs import ModelInputs
from interp_ops import ablation, onnx_bundle
from tasks import CACHED
from tasks.gpu import compute_share


@task(name="ablation", **CACHED)
def ablate_layer(
    onnx_bytes: bytes,
    inputs: ModelInputs,
    layer: str,
    candidates: list[int] | None,
    top: int | None,
    sizes: list[int],
    random_draws: int,
    num_classes: int,
    batch_size: int,
    seed: int,
    device: str,
) -> ablation.AblationEffects:
    """Per class and K, what zeroing the class's K most important ``candidates`` of ``layer`` (every unit when
    None; of those, the ``top`` of largest effect when given) takes from it, beside random units. The data streams through a batch at a time: each batch's activations
    at the layer are computed once, and the rest of the graph runs on them per set of units."""
    onnx_bytes, inputs = materialized(onnx_bytes), materialized_inputs(inputs)
    with compute_share(device) as threads:
        try:
            tail = onnx_bundle.make_session(ablation.graph_after(onnx_bytes, layer), device, threads)
            head = onnx_bundle.make_session(onnx_bytes, device, threads)
            activations = ablation.computed_activations(head, inputs.x, layer, batch_size)
            return ablation.UnitAblation(tail, activations, inputs.labels, num_classes, batch_size).effects(
                sizes, random_draws, seed, inputs.class_names, candidates, top
            )
        except ablation.AblationError as exc:  # a layer with a skip connection around it, too few detectors
            raise SpecError(f"ops.ablation: {exc}") from None
