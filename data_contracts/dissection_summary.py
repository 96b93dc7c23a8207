"""`dissection_summary`: how many units detect concepts of each category, for the model and for chance."""

import pyarrow as pa

from data_contracts._core import RUN_ID, TableContract, Threshold, column

CONTRACT = TableContract(
    name="dissection_summary",
    description="One row per dissected layer x concept category: detector counts, model and random baseline.",
    schema=pa.schema(
        [
            RUN_ID,
            column("layer", pa.string(), "Dissected layer."),
            column("category", pa.string(), "Concept category."),
            column("detectors", pa.int64(), "Units whose best concept is of this category with IoU >= threshold."),
            column("unique_concepts", pa.int64(), "Distinct concepts of this category those units detect."),
            column(
                "detectors_above_baseline",
                pa.int64(),
                "Of those, units whose IoU beats every random-init unit of the layer on the same concept; "
                "null without a baseline.",
                nullable=True,
            ),
            column(
                "baseline_detectors",
                pa.int64(),
                "The same count for the random-init model; null without one.",
                nullable=True,
            ),
            column(
                "baseline_unique_concepts",
                pa.int64(),
                "The same for the random-init model; null without one.",
                nullable=True,
            ),
        ]
    ),
    unique_key=("run_id", "layer", "category"),
    allowed_values={},
    ranges={
        "detectors": (0, None),
        "unique_concepts": (0, None),
        "detectors_above_baseline": (0, None),
        "baseline_detectors": (0, None),
        "baseline_unique_concepts": (0, None),
    },
)

THRESHOLDS: tuple[Threshold, ...] = ()
