"""TCAV tasks: the concepts' examples read once, then one task per layer and batch of concepts (``interp_ops.tcav``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from prefect import task

from interp_audit.blobs import materialized
from interp_audit.errors import SpecError
from interp_audit.inputs import ConceptData, ConceptImages
from interp_audit.intake import ModelRef, build_torch_model
from interp_audit.spec import InputSpec
from interp_ops import onnx_bundle, tcav
from interp_ops.datasets import DataError, preview_samples, to_model_input
from interp_ops.token_grid import TokenGrid
from tasks import CACHED
from tasks.gpu import compute_share


@task(name="tcav-concepts", **CACHED)
def load_concept_examples(
    concepts: dict[str, ConceptImages | ConceptData], count: int, base_dir: str, input_spec: InputSpec, seed: int
) -> dict[str, np.ndarray]:
    """Each concept's first ``count`` examples as model input: images of the concept source that hold it, or the
    first samples of its own data URI."""
    examples = {}
    for name, source in concepts.items():
        try:
            if isinstance(source, ConceptImages):
                examples[name] = source[:count]
            else:
                samples = preview_samples(source.uri, Path(base_dir), seed, count).head
                examples[name] = to_model_input(
                    samples, tuple(input_spec.shape), tuple(input_spec.range), input_spec.mean, input_spec.std
                )
        except DataError as exc:
            raise SpecError(f"ops.tcav.concepts.{name}: {str(exc).removeprefix('data: ')}") from None
    return examples


@task(name="tcav", **CACHED)
def tcav_layer(
    model: ModelRef,
    onnx_bytes: bytes,
    layer: str,
    grid: TokenGrid | None,
    concepts: dict[str, np.ndarray],
    pool: np.ndarray,
    random_sets: list[np.ndarray],
    classes: dict[int, np.ndarray],
    seed: int,
    alpha: float,
    comparisons: int,
    batch_size: int,
    device: str,
) -> dict[tuple[str, int], tcav.TcavResult]:
    """The concepts' TCAV scores at ``layer`` for every class, each tested against the random sets of ``pool``
    (activations from the audit's ONNX graph, class-logit gradients from the torch model)."""
    onnx_bytes, pool = materialized(onnx_bytes), materialized(pool)
    concepts = {name: materialized(x) for name, x in concepts.items()}
    classes = {index: materialized(x) for index, x in classes.items()}
    with compute_share(device) as threads:
        session = onnx_bundle.make_session(onnx_bytes, device, threads)
        torch_model = build_torch_model(model).to(device)
        try:
            return tcav.layer_tcav(
                session,
                torch_model,
                layer,
                concepts,
                pool,
                random_sets,
                classes,
                seed,
                alpha,
                comparisons,
                grid,
                batch_size,
                device,
            )
        except tcav.TcavError as exc:
            raise SpecError(f"ops.tcav: {exc}") from None


def tcav_rows(
    layer: str,
    results: dict[tuple[str, int], tcav.TcavResult],
    class_names: list[str] | None,
    class_inputs: dict[int, int],
) -> list[dict]:
    """``tcav_scores`` rows (without run_id) of one layer's results; ``class_inputs``: each class's inputs scored."""
    return [
        {
            "layer": layer,
            "concept": concept,
            "class_index": class_index,
            "class_name": class_names[class_index] if class_names else str(class_index),
            "score_mean": result.score_mean,
            "score_std": result.score_std,
            "random_score_mean": result.random_score_mean,
            "random_score_std": result.random_score_std,
            "p_value": None if np.isnan(result.p_value) else result.p_value,
            "significant": result.significant,
            "threshold": result.threshold,
            "cav_accuracy_mean": float(np.mean(result.accuracies)),
            "random_cav_accuracy_mean": float(np.mean(result.random_accuracies)),
            "random_sets": len(result.scores),
            "class_inputs": class_inputs[class_index],
        }
        for (concept, class_index), result in results.items()
    ]
