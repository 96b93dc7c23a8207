"""Network-dissection tasks: one per layer (model and random baseline alike), then the three report tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from prefect import task

from interp_audit.blobs import materialized
from interp_audit.errors import SpecError
from interp_audit.inputs import concepts_error, load_concepts
from interp_audit.intake import ModelRef, build_torch_model
from interp_audit.spec import InputSpec
from interp_ops import dissection, onnx_bundle
from interp_ops.concepts import ConceptDataError, ConceptSet
from interp_ops.randomisation import random_init_copy
from interp_ops.token_grid import TokenGrid
from tasks import CACHED, cached
from tasks.gpu import compute_share


def _concepts(uri: str, base_dir: str, seed: int) -> ConceptSet:
    return load_concepts(uri, Path(base_dir), seed)


def _concepts_content(parameters) -> dict:
    """The tables read the concepts' names, not only their path: key them on the concept set's fingerprint."""
    from interp_ops.concepts import concepts_fingerprint

    return {
        "concepts_sha256": concepts_fingerprint(
            parameters["concepts_uri"], Path(parameters["base_dir"]), parameters["seed"]
        )
    }


@task(name="random-init-baseline", **CACHED)
def export_random_baseline(
    model: ModelRef, input_shape: tuple[int, ...], layers: list[str], grids: dict[str, TokenGrid], seed: int
) -> bytes:
    """The ONNX bundle of the same architecture with seeded random weights: what chance alone detects."""
    baseline = random_init_copy(build_torch_model(model), seed)
    return onnx_bundle.export_torch(baseline, input_shape, layers, grids)


@task(name="dissection", **CACHED)
def dissect_layer(
    onnx_bytes: bytes,
    layer: str,
    concepts_uri: str,
    base_dir: str,
    concepts_fingerprint: str,
    quantile: float,
    batch_size: int,
    input_spec: InputSpec,
    seed: int,
    device: str,
) -> dissection.DissectionResult:
    """IoU of every unit of ``layer`` with every concept; ``concepts_fingerprint`` keys the cache on their content."""
    onnx_bytes = materialized(onnx_bytes)
    concepts = _concepts(concepts_uri, base_dir, seed)
    with compute_share(device) as threads:
        try:
            return dissection.dissect(
                onnx_bundle.make_session(onnx_bytes, device, threads),
                concepts,
                [layer],
                input_shape=input_spec.shape,
                value_range=tuple(input_spec.range),
                mean=input_spec.mean,
                std=input_spec.std,
                quantile=quantile,
                batch_size=batch_size,
            )[layer]
        except ConceptDataError as exc:  # a mask holding an unknown label: bad input, exit 2, named as preflight would
            raise concepts_error(exc) from None
        except dissection.DissectionError as exc:
            raise SpecError(f"ops.dissection: {exc}") from None


@task(name="dissection-tables", **cached(extra=_concepts_content))
def dissection_tables(
    results: list[dissection.DissectionResult],
    baselines: list[dissection.DissectionResult] | None,
    concepts_uri: str,
    base_dir: str,
    seed: int,
    iou_threshold: float,
) -> dict[str, list[dict]]:
    """Rows of ``dissection_units`` (with the baseline beside each unit), ``dissection_tally`` and
    ``dissection_summary``."""
    concepts = _concepts(concepts_uri, base_dir, seed)
    tables = dissection.results_tables({r.layer: r for r in results}, concepts, iou_threshold)
    units, summary = tables["units"], tables["summary"]
    if baselines is None:
        for column in ("baseline_iou", "baseline_max_iou"):
            units[column] = None
        for column in ("detectors_above_baseline", "baseline_detectors", "baseline_unique_concepts"):
            summary[column] = None
    else:
        units = _with_baseline(units, results, baselines)
        chance = dissection.results_tables({r.layer: r for r in baselines}, concepts, iou_threshold)["summary"]
        summary = summary.merge(
            chance.rename(columns={"detectors": "baseline_detectors", "unique_concepts": "baseline_unique_concepts"}),
            on=["layer", "category"],
            how="left",
        )
        above = units[units.is_detector & (units.iou > units.baseline_max_iou)].groupby(["layer", "category"]).size()
        summary["detectors_above_baseline"] = [
            int(above.get((layer, category), 0)) for layer, category in zip(summary.layer, summary.category)
        ]
    return {
        "dissection_units": units.to_dict("records"),
        "dissection_tally": tables["tally"].to_dict("records"),
        "dissection_summary": summary.to_dict("records"),
    }


def _with_baseline(units, results: list[dissection.DissectionResult], baselines: list[dissection.DissectionResult]):
    """Each unit's best concept, as scored by the same unit and by the best unit of the random-init layer."""
    same_unit, best_unit = [], []
    chance = {result.layer: result for result in baselines}
    for result in results:
        baseline = chance[result.layer]
        column = np.searchsorted(baseline.label_ids, result.best_label)
        same_unit += baseline.iou[np.arange(len(column)), column].tolist()
        best_unit += baseline.iou[:, column].max(axis=0).tolist()
    units = units.copy()
    units["baseline_iou"], units["baseline_max_iou"] = same_unit, best_unit
    return units
