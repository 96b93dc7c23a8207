"""`tcav_scores`: whether a concept pushes a class's logit up at a layer, tested against random sets (TCAV, Kim et
al. 2018)."""

import pyarrow as pa

from data_contracts._core import RUN_ID, TableContract, Threshold, column

CONTRACT = TableContract(
    name="tcav_scores",
    description="One row per concept x layer x class: the concept's TCAV score against each random set of the "
    "data, the random sets' scores against each other (the null), and the two-sided t-test between them.",
    schema=pa.schema(
        [
            RUN_ID,
            column("layer", pa.string(), "Layer whose activations the CAVs separate (model.layers name)."),
            column("concept", pa.string(), "Concept (ops.tcav.concepts)."),
            column("class_index", pa.int64(), "Class index (model output) whose logit is differentiated."),
            column("class_name", pa.string(), "Class name (the data's, else the index)."),
            column(
                "score_mean",
                pa.float64(),
                "Mean over the random sets of the TCAV score: the share of the class's inputs whose logit rises "
                "along the concept's CAV (0.5: no direction preferred).",
            ),
            column("score_std", pa.float64(), "Standard deviation of those scores over the random sets."),
            column(
                "random_score_mean",
                pa.float64(),
                "Mean TCAV score of the null: random set i's CAV against random set i+1, over the sets.",
            ),
            column("random_score_std", pa.float64(), "Standard deviation of the null's scores."),
            column(
                "p_value",
                pa.float64(),
                "Two-sided t-test of the concept's scores against the null's; null when neither side varies.",
                nullable=True,
            ),
            column(
                "threshold",
                pa.float64(),
                "The p-value below which a test is significant: ops.tcav.alpha / the tests made (Bonferroni over "
                "concepts x layers x classes).",
            ),
            column("significant", pa.bool_(), "p_value < threshold."),
            column(
                "cav_accuracy_mean",
                pa.float64(),
                "Mean held-out accuracy of the concept's CAVs (near 0.5: the layer does not tell the concept from "
                "random data, and its scores say little).",
            ),
            column("random_cav_accuracy_mean", pa.float64(), "Mean held-out accuracy of the null's CAVs."),
            column("random_sets", pa.int64(), "Random sets tested against (ops.tcav.random_sets)."),
            column("class_inputs", pa.int64(), "Inputs of the class scored."),
        ]
    ),
    unique_key=("run_id", "layer", "concept", "class_index"),
    allowed_values={},
    ranges={
        "class_index": (0, None),
        "score_mean": (0, 1),
        "score_std": (0, 0.5),
        "random_score_mean": (0, 1),
        "random_score_std": (0, 0.5),
        "p_value": (0, 1),
        "threshold": (0, 1),
        "cav_accuracy_mean": (0, 1),
        "random_cav_accuracy_mean": (0, 1),
        "random_sets": (2, None),
        "class_inputs": (1, None),
    },
)

THRESHOLDS = (
    Threshold(
        key="tcav.min_cav_accuracy",
        table="tcav_scores",
        column="cav_accuracy_mean",
        bound="min",
        doc="Smallest mean held-out accuracy of a concept's CAVs: below it the layer barely tells the concept "
        "from random data, and its TCAV scores are not evidence either way.",
    ),
)
