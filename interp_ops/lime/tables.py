"""The two report tables LIME returns: one row per sample x label (explanations), one per feature too
(attributions), with the columns every kind of data shares; each explainer adds its own through callbacks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from interp_ops.lime.explain import Fit, LoopSettings
from interp_ops.lime.scores import attribution_order


@dataclass(frozen=True)
class LimeResult:
    """The two report tables as lists of rows.

    explanations, one row per sample x label: sample_index, label, probability (the model's, on the input),
    intercept, local_prediction (the surrogate's with every feature on), r2_in_sample, r2_heldout (None
    without held-out rows), prediction_gap (|local_prediction - probability|), stability (mean pairwise
    Jaccard of the top-k sets over the stability seeds; None for one seed), deletion_auc, insertion_auc,
    faithfulness_correlation (Bhatt et al.'s correlation of random subsets' weight sums with the probability
    drop when they are hidden; None when off, or when the drops or the sums were all equal), kernel_width,
    num_samples, num_features, top_features, and for images overlay_png, height, width and segments (the
    superpixel map: the (height, width) segment ids as a flat row-major int64 array, the attributions'
    ``segment`` values).
    attributions, one row per sample x label x feature: sample_index, label, feature (the feature's name: the
    segment id in decimal for images), weight, rank (1 = most positive weight for images, largest |weight|
    for tables), and segment (the segment id as given by the segmentation) with area_fraction (images) or
    bin (tables: the instance's quartile bin, named as lime names it).
    """

    explanations: list[dict]
    attributions: list[dict]


def table_rows(
    fits: list[Fit],
    features: list[Sequence],
    settings: LoopSettings,
    *,
    explanation_extra: Callable[[int, np.ndarray], dict],
    attribution_extra: Callable[[int, int], dict],
    by_magnitude: bool = False,
) -> tuple[list[dict], list[dict]]:
    """Rows of the explanations and attributions tables, features named by `features` (one sequence per
    sample); the callbacks add the method-specific columns for (sample, top features) and (sample, feature).

    Features rank by weight (images: the superpixels that support the label, as lime's positive-only mask) or,
    ``by_magnitude``, by |weight| (tabular: a column that argues against the label matters too, as lime's
    ``as_list``)."""
    explanations, attributions = [], []
    for index, fit in enumerate(fits):
        names = features[index]
        for row, label in enumerate(fit.labels):
            weights = fit.coef[row : row + 1]
            order = attribution_order(np.abs(weights) if by_magnitude else weights)[0]
            top = order[: min(settings.top_k, len(order))]
            local_prediction = float(fit.intercept[row] + fit.coef[row].sum())
            explanations.append(
                {
                    "sample_index": index,
                    "label": int(label),
                    "probability": float(fit.probability[row]),
                    "intercept": float(fit.intercept[row]),
                    "local_prediction": local_prediction,
                    "r2_in_sample": float(fit.r2_in_sample[row]),
                    "r2_heldout": None if fit.r2_heldout is None else float(fit.r2_heldout[row]),
                    "prediction_gap": abs(local_prediction - float(fit.probability[row])),
                    "stability": None if fit.stability is None else float(fit.stability[row]),
                    "deletion_auc": float(fit.deletion_auc[row]),
                    "insertion_auc": float(fit.insertion_auc[row]),
                    "faithfulness_correlation": None if fit.faithfulness is None else fit.faithfulness[row],
                    "kernel_width": float(settings.kernel_width),
                    "num_samples": settings.num_samples,
                    "num_features": len(order),
                    "top_features": [names[f] for f in top],
                    **explanation_extra(index, top),
                }
            )
            rank = np.empty(len(order), dtype=np.int64)
            rank[order] = np.arange(1, len(order) + 1)
            for feature in order:
                attributions.append(
                    {
                        "sample_index": index,
                        "label": int(label),
                        "feature": names[feature],
                        "weight": float(fit.coef[row, feature]),
                        "rank": int(rank[feature]),
                        **attribution_extra(index, feature),
                    }
                )
    return explanations, attributions
