"""`dissection_tally`: every unit x concept pair whose IoU clears a small floor."""

import pyarrow as pa

from data_contracts._core import RUN_ID, TableContract, Threshold, column

CONTRACT = TableContract(
    name="dissection_tally",
    description="One row per dissected unit x concept with IoU >= 0.01 (the audited model, not the baseline).",
    schema=pa.schema(
        [
            RUN_ID,
            column("layer", pa.string(), "Dissected layer."),
            column("unit", pa.int64(), "Unit (channel) index within the layer."),
            column("concept", pa.string(), "Concept name (label.csv)."),
            column("category", pa.string(), "The concept's category."),
            column("iou", pa.float64(), "Data-set-wide IoU of the unit with the concept."),
        ]
    ),
    unique_key=("run_id", "layer", "unit", "concept"),
    allowed_values={},
    ranges={"unit": (0, None), "iou": (0, 1)},
)

THRESHOLDS: tuple[Threshold, ...] = ()
