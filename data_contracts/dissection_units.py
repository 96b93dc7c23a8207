"""`dissection_units`: each unit's best concept, its IoU, and what a random-weight twin of the unit scores."""

import pyarrow as pa

from data_contracts._core import RUN_ID, TableContract, Threshold, column

CONTRACT = TableContract(
    name="dissection_units",
    description="One row per dissected unit: its best concept (Bau et al. 2017) next to the random baseline.",
    schema=pa.schema(
        [
            RUN_ID,
            column("layer", pa.string(), "Dissected layer (module or tensor name)."),
            column("unit", pa.int64(), "Unit (channel) index within the layer."),
            column("concept", pa.string(), "The concept with the highest IoU for this unit."),
            column("category", pa.string(), "The concept's category (e.g. color, object, texture, scene)."),
            column("iou", pa.float64(), "Data-set-wide IoU of the unit's top-quantile mask with the concept."),
            column("threshold", pa.float64(), "The unit's activation threshold (its top-quantile value)."),
            column("is_detector", pa.bool_(), "iou >= the spec's iou_threshold."),
            column(
                "baseline_iou",
                pa.float64(),
                "IoU of the same unit of the random-init model on the same concept; null without a baseline.",
                nullable=True,
            ),
            column(
                "baseline_max_iou",
                pa.float64(),
                "Highest IoU any unit of the random-init layer reaches on this concept: an IoU above it is "
                "more than chance alone gives. Null without a baseline.",
                nullable=True,
            ),
        ]
    ),
    unique_key=("run_id", "layer", "unit"),
    allowed_values={},
    ranges={"unit": (0, None), "iou": (0, 1), "baseline_iou": (0, 1), "baseline_max_iou": (0, 1)},
)

THRESHOLDS: tuple[Threshold, ...] = ()
