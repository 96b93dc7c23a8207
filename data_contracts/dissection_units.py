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
            column(
                "ablation_class",
                pa.string(),
                "The class whose mean probability (over its samples) falls most when this unit alone is zeroed "
                "(ops.ablation of the layer); null where none falls, the layer was not ablated or the unit not "
                "ranked.",
                nullable=True,
            ),
            column(
                "ablation_probability_drop",
                pa.float64(),
                "How much that class's mean probability falls (0 or less: no class's does); null where the layer "
                "was not ablated or the unit not ranked.",
                nullable=True,
            ),
            column(
                "ablation_accuracy_drop",
                pa.float64(),
                "What the same class's balanced accuracy loses; null as ablation_probability_drop.",
                nullable=True,
            ),
        ]
    ),
    unique_key=("run_id", "layer", "unit"),
    allowed_values={},
    ranges={
        "unit": (0, None),
        "iou": (0, 1),
        "baseline_iou": (0, 1),
        "baseline_max_iou": (0, 1),
        "ablation_probability_drop": (-1, 1),
        "ablation_accuracy_drop": (-1, 1),
    },
)

THRESHOLDS: tuple[Threshold, ...] = ()
