"""Linear-probe tasks: the concept source's labels read once, then one task per layer and set of inputs (the data,
the concept source's images), each probing every attribute of that set (``interp_ops.probes``)."""

from __future__ import annotations

import numpy as np
from prefect import task

from interp_audit.blobs import materialized, materialized_inputs
from interp_audit.errors import SpecError
from interp_audit.inputs import ConceptImages, ModelInputs
from interp_ops import onnx_bundle, probes
from tasks import CACHED
from tasks.gpu import compute_share


@task(name="probe-concept-labels", **CACHED)
def concept_labels(images: ConceptImages, names: list[str]) -> dict[str, np.ndarray]:
    """``concept:NAME`` -> whether each of the concept source's first images (the probes' ``images``) holds the
    concept (from its masks)."""
    concepts = images.concepts.head(len(images))
    try:
        return {f"concept:{name}": probes.concept_presence(concepts, name) for name in names}
    except probes.ProbeError as exc:
        raise SpecError(f"ops.probes.attributes: {exc}") from None


@task(name="probe", **CACHED)
def probe_layer(
    onnx_bytes: bytes,
    layer: str,
    inputs: ModelInputs | ConceptImages,
    count: int,
    labels: dict[str, np.ndarray],
    folds: int,
    seed: int,
    batch_size: int,
    device: str,
) -> dict[str, probes.ProbeResult]:
    """Every attribute in ``labels`` probed at ``layer`` on the first ``count`` of ``inputs``: their pooled
    activations are computed once, streamed from the audit's ONNX graph, and serve every attribute."""
    x = materialized_inputs(inputs).x if isinstance(inputs, ModelInputs) else inputs
    if count < len(x):
        x = x[:count]
    with compute_share(device) as threads:
        session = onnx_bundle.make_session(materialized(onnx_bytes), device, threads)
        try:
            features = probes.pooled_activations(session, x, layer, batch_size)
            return {attribute: probes.probe(features, y, folds, seed) for attribute, y in labels.items()}
        except probes.ProbeError as exc:  # e.g. a class with fewer inputs than folds
            raise SpecError(f"ops.probes ({layer}): {exc}") from None


def probe_rows(layer: str, depth: int, inputs: str, count: int, results: dict[str, probes.ProbeResult]) -> list[dict]:
    """``probe_results`` rows (without run_id) of one layer's results on one set of inputs."""
    return [
        {
            "layer": layer,
            "depth": depth,
            "attribute": attribute,
            "inputs": inputs,
            "samples": count,
            "folds": len(result.accuracies),
            "accuracy_mean": result.accuracy_mean,
            "accuracy_std": result.accuracy_std,
            "chance": result.chance,
            "control_accuracy": result.control_mean,
            "selectivity": result.selectivity,
        }
        for attribute, result in results.items()
    ]
