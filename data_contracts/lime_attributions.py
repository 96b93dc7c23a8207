"""`lime_attributions`: the surrogate's weight of every feature of every LIME explanation."""

import pyarrow as pa

from data_contracts._core import RUN_ID, TableContract, Threshold, column

CONTRACT = TableContract(
    name="lime_attributions",
    description="One row per explained sample x label x feature (superpixel or column).",
    schema=pa.schema(
        [
            RUN_ID,
            column("sample_id", pa.string(), "Id of the explained sample."),
            column("label", pa.int64(), "Explained class index."),
            column(
                "feature",
                pa.string(),
                "The feature's name: the superpixel id in decimal (images) or the column name (tabular).",
            ),
            column(
                "segment",
                pa.int64(),
                "Superpixel id as produced by the segmentation, one of the values in lime_explanations.segments "
                "(images only: set on every image row, null on tabular rows).",
                nullable=True,
            ),
            column("weight", pa.float64(), "Surrogate weight: the change in probability the feature accounts for."),
            column(
                "rank",
                pa.int64(),
                "1 for the most important feature: the most positive weight (images) or the "
                "largest |weight| (tabular).",
            ),
            column(
                "area_fraction", pa.float64(), "Share of the image the superpixel covers (images only).", nullable=True
            ),
            column(
                "bin",
                pa.string(),
                "The instance's quartile bin of the column, e.g. '0.2 < age <= 0.5' (tabular only).",
                nullable=True,
            ),
        ]
    ),
    unique_key=("run_id", "sample_id", "label", "feature"),
    allowed_values={},
    ranges={"label": (0, None), "rank": (1, None), "area_fraction": (0, 1)},
)

THRESHOLDS: tuple[Threshold, ...] = ()
