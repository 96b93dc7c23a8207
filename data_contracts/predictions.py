"""`predictions`: the model's prediction for every audited sample."""

import pyarrow as pa

from data_contracts._core import RUN_ID, TableContract, Threshold, column

CONTRACT = TableContract(
    name="predictions",
    description="One row per audited sample: the label if known and the model's prediction.",
    schema=pa.schema(
        [
            RUN_ID,
            column("sample_id", pa.string(), "Id of the sample within the data set."),
            column("label", pa.int64(), "True class index; null for unlabeled data.", nullable=True),
            column("label_name", pa.string(), "Name of the true class, if known.", nullable=True),
            column("predicted", pa.int64(), "Predicted class index."),
            column(
                "predicted_name",
                pa.string(),
                "Name of the predicted class, if known.",
                nullable=True,
            ),
            column("probability", pa.float64(), "Softmax probability of the predicted class."),
            column(
                "correct",
                pa.bool_(),
                "Whether the prediction equals the label; null for unlabeled data.",
                nullable=True,
            ),
        ]
    ),
    unique_key=("run_id", "sample_id"),
    allowed_values={},
    ranges={"predicted": (0, None), "probability": (0, 1)},
)

THRESHOLDS: tuple[Threshold, ...] = ()
