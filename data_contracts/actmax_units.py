"""`actmax_units`: one activation-maximization render per unit, with how hard it drives the unit."""

import pyarrow as pa

from data_contracts._core import RUN_ID, TableContract, Threshold, column

CONTRACT = TableContract(
    name="actmax_units",
    description="One row per visualized unit x render: the synthesized image and its scores.",
    schema=pa.schema(
        [
            RUN_ID,
            column("layer", pa.string(), "Audited layer (module name)."),
            column("unit", pa.int64(), "Unit (channel) index within the layer."),
            column("render", pa.int64(), "Index of the render among the unit's renders (0 unless several asked)."),
            column("objective", pa.string(), "What was maximized, e.g. channel(features.12, 5)."),
            column("render_png", pa.binary(), "PNG of the render, in the model's display space."),
            column("final_activation", pa.float64(), "The objective on the final render, without transforms."),
            column("dataset_max", pa.float64(), "The unit's largest objective value over the audit's data."),
            column(
                "ratio",
                pa.float64(),
                "final_activation / dataset_max; >= 1 means the render drives the unit harder than any "
                "real image. Null when dataset_max <= 0.",
                nullable=True,
            ),
            column(
                "robustness",
                pa.float64(),
                "Mean objective under fresh random transforms / final_activation: near 1 means the "
                "pattern is robust, not a pixel-exact adversarial trick. Null when final_activation is 0 "
                "(a dead unit).",
                nullable=True,
            ),
            column(
                "random_ratio",
                pa.float64(),
                "The same ratio for the same unit of the model's copy with every weight re-drawn (seeded; "
                "ops.activation_max.sanity): a unit that learned something should be rendered better than a random "
                "one. Null without the check, or when the copy's data never drive the unit above 0.",
                nullable=True,
            ),
            column(
                "random_robustness",
                pa.float64(),
                "The same robustness for the re-drawn copy's render of the unit; null without the check.",
                nullable=True,
            ),
            column(
                "diversity",
                pa.float64(),
                "Mean pairwise cosine distance of the layer's features among the unit's renders; null "
                "with one render per unit.",
                nullable=True,
            ),
            column("curve_steps", pa.list_(pa.int64()), "Optimisation steps at which `curve` was recorded."),
            column("curve", pa.list_(pa.float64()), "The objective at each of `curve_steps`."),
        ]
    ),
    unique_key=("run_id", "layer", "unit", "render"),
    allowed_values={},
    ranges={"unit": (0, None), "render": (0, None), "diversity": (0, 2)},
)

THRESHOLDS = (
    Threshold(
        key="actmax.min_ratio",
        table="actmax_units",
        column="ratio",
        bound="min",
        doc="Smallest render/dataset-max ratio of any unit: below it a render is a weak picture of "
        "what the unit responds to.",
    ),
    Threshold(
        key="actmax.min_robustness",
        table="actmax_units",
        column="robustness",
        bound="min",
        doc="Smallest transformation robustness of any render: below it the render relies on exact pixels.",
    ),
)
