"""`lime_explanations`: one LIME explanation per sample and label, with its fidelity and stability scores."""

import pyarrow as pa

from data_contracts._core import RUN_ID, TableContract, Threshold, column

CONTRACT = TableContract(
    name="lime_explanations",
    description="One row per explained sample x label: the local surrogate and how far it can be trusted.",
    schema=pa.schema(
        [
            RUN_ID,
            column("sample_id", pa.string(), "Id of the explained sample."),
            column("label", pa.int64(), "Explained class index."),
            column("label_name", pa.string(), "Name of the explained class, if known.", nullable=True),
            column("probability", pa.float64(), "Model probability of the label on the unperturbed input."),
            column("intercept", pa.float64(), "Intercept of the weighted ridge surrogate."),
            column("local_prediction", pa.float64(), "Surrogate prediction at the unperturbed (all-on) row."),
            column("prediction_gap", pa.float64(), "|local_prediction - probability|: 0 is a perfect local fit."),
            column("r2_in_sample", pa.float64(), "Weighted R^2 of the surrogate on the perturbations it was fit on."),
            column(
                "r2_heldout",
                pa.float64(),
                "Weighted R^2 on fresh perturbations not used in the fit; null when none were asked for.",
                nullable=True,
            ),
            column(
                "stability",
                pa.float64(),
                "Mean pairwise Jaccard of the top-k features across stability seeds; null with one seed.",
                nullable=True,
            ),
            column(
                "deletion_auc",
                pa.float64(),
                "Area under the probability curve while removing features in attribution order, sampled at up to 21 "
                "points (lower is better).",
            ),
            column(
                "insertion_auc",
                pa.float64(),
                "Area under the probability curve while adding features in attribution order, sampled at up to 21 "
                "points (higher is better).",
            ),
            column(
                "faithfulness_correlation",
                pa.float64(),
                "Pearson correlation, over random feature subsets, of their summed weights with the drop in "
                "probability when they are hidden (Bhatt et al. 2020; higher is better); null when off or when "
                "the drops or sums were all equal.",
                nullable=True,
            ),
            column("kernel_width", pa.float64(), "Width of the exponential kernel on the distance."),
            column("num_samples", pa.int64(), "Perturbations the surrogate was fit on (the all-on row included)."),
            column("num_features", pa.int64(), "Interpretable features: superpixels (images) or columns (tabular)."),
            column(
                "top_features",
                pa.list_(pa.string()),
                "The top-k features, most important first (see lime_attributions.rank).",
            ),
            column(
                "overlay_png",
                pa.binary(),
                "PNG of the image with the top-k superpixels outlined (images only).",
                nullable=True,
            ),
            column("height", pa.int64(), "Height of the explained image in pixels (images only).", nullable=True),
            column("width", pa.int64(), "Width of the explained image in pixels (images only).", nullable=True),
            column(
                "segments",
                pa.list_(pa.int64()),
                "The superpixel of every pixel: height*width segment ids in row-major order, each one a "
                "lime_attributions.segment of the same sample and label (images only: set on every image row, "
                "null on tabular rows).",
                nullable=True,
            ),
        ]
    ),
    unique_key=("run_id", "sample_id", "label"),
    allowed_values={},
    ranges={
        "label": (0, None),
        "probability": (0, 1),
        "prediction_gap": (0, None),
        "r2_in_sample": (None, 1),
        "r2_heldout": (None, 1),
        "stability": (0, 1),
        "deletion_auc": (0, 1),
        "insertion_auc": (0, 1),
        "faithfulness_correlation": (-1, 1),
        "kernel_width": (0, None),
        "num_samples": (2, None),
        "num_features": (2, None),
        "height": (1, None),
        "width": (1, None),
    },
)

THRESHOLDS = (
    Threshold(
        key="lime.min_r2_heldout",
        table="lime_explanations",
        column="r2_heldout",
        bound="min",
        doc="Smallest held-out R^2 of any LIME surrogate: below it the explanation is not faithful.",
    ),
    Threshold(
        key="lime.min_stability",
        table="lime_explanations",
        column="stability",
        bound="min",
        doc="Smallest top-k Jaccard across seeds of any LIME explanation: below it the ranking is noise.",
    ),
    Threshold(
        key="lime.min_faithfulness",
        table="lime_explanations",
        column="faithfulness_correlation",
        bound="min",
        doc="Smallest faithfulness correlation of any LIME explanation: below it the weights do not say how much "
        "hiding features moves the model.",
    ),
)
