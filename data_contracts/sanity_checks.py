"""`sanity_checks`: how similar an explanation stays when the model's weights are re-drawn, layer by layer from the
top (Adebayo et al. 2018)."""

import pyarrow as pa

from data_contracts._core import RUN_ID, TableContract, Threshold, column

CONTRACT = TableContract(
    name="sanity_checks",
    description="One row per checked sample, explained label and randomisation step: the rank similarity of its "
    "explanation under the randomised copy to its explanation under the model.",
    schema=pa.schema(
        [
            RUN_ID,
            column("method", pa.string(), "The explanation checked: lime."),
            column("sample_id", pa.string(), "Sample explained."),
            column("label", pa.int64(), "Class explained (the model's, kept for every randomised copy)."),
            column(
                "step",
                pa.int64(),
                "Randomisation step: the top `step` layers (modules with parameters, output first) re-drawn.",
            ),
            column("randomised_through", pa.string(), "The lowest module re-drawn at this step."),
            column(
                "similarity",
                pa.float64(),
                "Spearman rank correlation of the explanation's weights (LIME: per superpixel, same segments and "
                "perturbations) with the model's own: near 1, the explanation ignores the model.",
            ),
            column(
                "similarity_abs",
                pa.float64(),
                "The same of the absolute weights: what is important, whatever its sign.",
            ),
        ]
    ),
    unique_key=("run_id", "method", "sample_id", "label", "step"),
    allowed_values={"method": ("lime",)},
    ranges={"label": (0, None), "step": (1, None), "similarity": (-1, 1), "similarity_abs": (-1, 1)},
)

THRESHOLDS: tuple[Threshold, ...] = (
    Threshold(
        key="lime.max_randomised_similarity",
        table="sanity_checks",
        column="similarity",
        bound="max",
        doc="Highest rank similarity a LIME explanation may keep with a randomised copy of the model: above it "
        "the explanation does not depend on what the model learned.",
    ),
)
