"""`probe_results`: how well a linear probe reads an attribute off a layer, beyond its control task (Alain & Bengio
2016; Hewitt & Liang 2019)."""

import pyarrow as pa

from data_contracts._core import RUN_ID, TableContract, Threshold, column

CONTRACT = TableContract(
    name="probe_results",
    description="One row per probed layer x attribute: the cross-validated accuracy of a logistic probe on the "
    "layer's pooled activations, the same probe's on permuted labels (the control task), and their difference.",
    schema=pa.schema(
        [
            RUN_ID,
            column("layer", pa.string(), "Layer probed (model.layers name)."),
            column("depth", pa.int64(), "The layer's position in model.layers (0 = first): the order of depth."),
            column(
                "attribute",
                pa.string(),
                "What is probed: class, concept:NAME (presence, on the concept source's images) or column:NAME.",
            ),
            column("inputs", pa.string(), "Where the inputs came from: data or concept_source."),
            column("samples", pa.int64(), "Inputs probed."),
            column("folds", pa.int64(), "Cross-validation folds (ops.probes.folds)."),
            column("accuracy_mean", pa.float64(), "Mean held-out accuracy over the folds."),
            column("accuracy_std", pa.float64(), "Standard deviation of the fold accuracies."),
            column("chance", pa.float64(), "The majority class's share of the labels."),
            column(
                "control_accuracy",
                pa.float64(),
                "Mean held-out accuracy of the same probe, same folds, on the labels permuted with the seed.",
            ),
            column(
                "selectivity",
                pa.float64(),
                "accuracy_mean - control_accuracy: what the layer, not the probe's capacity, makes readable.",
            ),
        ]
    ),
    unique_key=("run_id", "layer", "attribute"),
    allowed_values={"inputs": ("data", "concept_source")},
    ranges={
        "depth": (0, None),
        "samples": (2, None),
        "folds": (2, None),
        "accuracy_mean": (0, 1),
        "accuracy_std": (0, 0.5),
        "chance": (0, 1),
        "control_accuracy": (0, 1),
        "selectivity": (-1, 1),
    },
)

THRESHOLDS = (
    Threshold(
        key="probes.min_accuracy",
        table="probe_results",
        column="accuracy_mean",
        bound="min",
        doc="Smallest probe accuracy at any probed layer: below it an attribute that must stay readable is lost.",
    ),
    Threshold(
        key="probes.max_selectivity",
        table="probe_results",
        column="selectivity",
        bound="max",
        doc="Largest selectivity at any probed layer: above it an attribute the model must not encode (a protected "
        "attribute, a watermark) is linearly readable.",
    ),
)
