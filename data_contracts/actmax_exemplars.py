"""`actmax_exemplars`: the real images that drive each visualized unit the most."""

import pyarrow as pa

from data_contracts._core import RUN_ID, TableContract, Threshold, column

CONTRACT = TableContract(
    name="actmax_exemplars",
    description="One row per visualized unit x exemplar rank: the audit's most activating samples.",
    schema=pa.schema(
        [
            RUN_ID,
            column("layer", pa.string(), "Audited layer (module name)."),
            column("unit", pa.int64(), "Unit (channel) index within the layer."),
            column("rank", pa.int64(), "1 for the sample that drives the unit the most."),
            column("sample_id", pa.string(), "Id of the sample."),
            column("activation", pa.float64(), "The unit's objective value on the sample (as in actmax_units)."),
            column("thumbnail_png", pa.binary(), "PNG of the sample as the model sees it (display space)."),
        ]
    ),
    unique_key=("run_id", "layer", "unit", "rank"),
    allowed_values={},
    ranges={"unit": (0, None), "rank": (1, None)},
)

THRESHOLDS: tuple[Threshold, ...] = ()
