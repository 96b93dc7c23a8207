"""`ablation_results`: what each class loses when its most important units of a layer are zeroed, next to what
random units of the layer take (Bau et al. 2020)."""

import pyarrow as pa

from data_contracts._core import RUN_ID, TableContract, Threshold, column

CONTRACT = TableContract(
    name="ablation_results",
    description="One row per ablated layer x class x K: the class's K most important units zeroed together "
    "(ranked on one half of the data, measured on the other), beside random sets of K units of the layer.",
    schema=pa.schema(
        [
            RUN_ID,
            column("layer", pa.string(), "Ablated layer (model.layers name)."),
            column("class_index", pa.int64(), "Class index (model output)."),
            column("class_name", pa.string(), "Class name (the data's, else the index)."),
            column("k", pa.int64(), "Number of units zeroed together."),
            column(
                "units",
                pa.list_(pa.int64()),
                "The K units of largest single-unit effect on the class (drop of its mean probability when zeroed "
                "alone, on the ranking half), among the ranked units (ops.ablation.units).",
            ),
            column(
                "accuracy_before",
                pa.float64(),
                "Balanced one-vs-rest accuracy of the class, (recall + true-negative rate) / 2, on the measuring "
                "half, nothing zeroed.",
            ),
            column("accuracy_after", pa.float64(), "The same with the K units zeroed."),
            column("accuracy_drop", pa.float64(), "accuracy_before - accuracy_after."),
            column(
                "probability_drop",
                pa.float64(),
                "Drop of the class's mean softmax probability over its own samples when the K units are zeroed.",
            ),
            column(
                "random_drop_mean",
                pa.float64(),
                "Mean accuracy drop over ops.ablation.random_draws random sets of K units of the layer; null with "
                "no draws.",
                nullable=True,
            ),
            column(
                "random_drop_std",
                pa.float64(),
                "Standard deviation of those random drops; null with no draws.",
                nullable=True,
            ),
        ]
    ),
    unique_key=("run_id", "layer", "class_index", "k"),
    allowed_values={},
    ranges={
        "class_index": (0, None),
        "k": (1, None),
        "accuracy_before": (0, 1),
        "accuracy_after": (0, 1),
        "accuracy_drop": (-1, 1),
        "probability_drop": (-1, 1),
        "random_drop_mean": (-1, 1),
        "random_drop_std": (0, 1),
    },
)

THRESHOLDS: tuple[Threshold, ...] = ()
