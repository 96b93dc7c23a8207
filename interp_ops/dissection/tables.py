"""The report tables of a dissection: units (each unit's best concept), tally (every unit-concept pair above a
floor) and summary (detectors per layer and category)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from interp_ops.concepts import ConceptSet
from interp_ops.dissection.result import DissectionResult

DEFAULT_IOU_THRESHOLD = 0.04  # NetDissect's: a unit is a detector of its best concept from this IoU
DEFAULT_TALLY_FLOOR = 0.01


def _concept_columns(concepts: ConceptSet, label_ids: np.ndarray) -> dict[str, pd.Series]:
    """The ``concept`` and ``category`` columns of rows whose labels are ``label_ids``."""
    return {
        "concept": pd.Series([concepts.labels[int(label)] for label in label_ids], dtype="string"),
        "category": pd.Series([concepts.label_category[int(label)] for label in label_ids], dtype="string"),
    }


def detectors(
    result: DissectionResult, concepts: ConceptSet, iou_threshold: float = DEFAULT_IOU_THRESHOLD
) -> pd.DataFrame:
    """Units table, one row per unit: layer, unit, concept (best label's name), category, iou, threshold,
    is_detector (iou >= iou_threshold). A unit that never fires has iou 0 and, as in NetDissect, the first label."""
    return pd.DataFrame(
        {
            "layer": pd.Series([result.layer] * len(result.best_label), dtype="string"),
            "unit": np.arange(len(result.best_label), dtype=np.int64),
            **_concept_columns(concepts, result.best_label),
            "iou": result.best_iou.astype(np.float64),
            "threshold": result.thresholds.astype(np.float64),
            "is_detector": result.best_iou >= iou_threshold,
        }
    )


def concept_tally(
    result: DissectionResult, concepts: ConceptSet, iou_floor: float = DEFAULT_TALLY_FLOOR
) -> pd.DataFrame:
    """Every (unit, concept) pair with IoU >= iou_floor: layer, unit, concept, category, iou; by unit, best first."""
    unit, column = np.nonzero(result.iou >= iou_floor)
    table = pd.DataFrame(
        {
            "layer": pd.Series([result.layer] * len(unit), dtype="string"),
            "unit": unit.astype(np.int64),
            **_concept_columns(concepts, result.label_ids[column]),
            "iou": result.iou[unit, column].astype(np.float64),
        }
    )
    return table.sort_values(["unit", "iou"], ascending=[True, False], kind="stable").reset_index(drop=True)


def detector_summary(units: pd.DataFrame, concepts: ConceptSet) -> pd.DataFrame:
    """Per (layer, category) of the units table: detectors (units that are detectors of a concept of that
    category) and unique_concepts (distinct concepts they detect); every category appears, with 0 if need be."""
    rows = []
    for layer in units["layer"].unique():
        of_layer = units[(units["layer"] == layer) & units["is_detector"]]
        for category in concepts.categories:
            found = of_layer[of_layer["category"] == category]
            rows.append(
                {
                    "layer": layer,
                    "category": category,
                    "detectors": len(found),
                    "unique_concepts": found["concept"].nunique(),
                }
            )
    return pd.DataFrame(
        {
            "layer": pd.Series([row["layer"] for row in rows], dtype="string"),
            "category": pd.Series([row["category"] for row in rows], dtype="string"),
            "detectors": np.array([row["detectors"] for row in rows], dtype=np.int64),
            "unique_concepts": np.array([row["unique_concepts"] for row in rows], dtype=np.int64),
        }
    )


def results_tables(
    results: Mapping[str, DissectionResult],
    concepts: ConceptSet,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    iou_floor: float = DEFAULT_TALLY_FLOOR,
) -> dict[str, pd.DataFrame]:
    """The three tables over all layers: ``units``, ``tally`` and ``summary``."""
    units = pd.concat([detectors(result, concepts, iou_threshold) for result in results.values()], ignore_index=True)
    tally = pd.concat([concept_tally(result, concepts, iou_floor) for result in results.values()], ignore_index=True)
    return {"units": units, "tally": tally, "summary": detector_summary(units, concepts)}
