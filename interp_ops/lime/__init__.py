"""LIME (Ribeiro et al. 2016) for images and tables, with the semantics of the `lime` package, but fast and scored.

What the package does per perturbed row in Python happens here once per batch in numpy: masks are drawn as
one matrix, perturbed inputs are composed straight into the model's batch buffer, the batches mix rows of
several samples, and all labels of a sample share its perturbations and one ridge solve. Each explanation is
scored: in-sample and held-out R^2 of the surrogate, its gap to the model, deletion/insertion AUC, the
faithfulness correlation, and top-k stability across seeds.

Modules: ``perturb`` (the `Perturbation` protocol a kind of data implements), ``image`` and ``tabular`` (its
two implementations and their explainers, whose docstrings list the deliberate differences from the
package), ``explain`` (the loop they share), ``batching`` (the model side), ``surrogate``, ``scores``,
``tables`` and ``errors``.
"""

from interp_ops.lime.batching import GivenRows, ModelRows, Predict, predict_in_batches
from interp_ops.lime.errors import LimeInputError
from interp_ops.lime.image import (
    OVERLAY_DIM,
    OVERLAY_EDGE,
    ImageLime,
    Segmentation,
    overlay_png,
    segment_means,
)
from interp_ops.lime.perturb import (
    Neighbourhood,
    Perturbation,
    cosine_distance_to_all_on,
    euclidean_distance_to_all_on,
)
from interp_ops.lime.scores import (
    CURVE_POINTS,
    attribution_order,
    curve_auc,
    curve_steps,
    deletion_insertion_masks,
    faithfulness_correlation,
    faithfulness_subset_size,
    faithfulness_subsets,
    subset_masks,
    top_k_jaccard,
    weighted_r2,
)
from interp_ops.lime.surrogate import exponential_kernel, weighted_ridge
from interp_ops.lime.tables import LimeResult
from interp_ops.lime.tabular import QuartileBins, TabularLime, fit_quartile_bins

__all__ = [
    "CURVE_POINTS",
    "OVERLAY_DIM",
    "OVERLAY_EDGE",
    "GivenRows",
    "ImageLime",
    "LimeInputError",
    "LimeResult",
    "ModelRows",
    "Neighbourhood",
    "Perturbation",
    "Predict",
    "QuartileBins",
    "Segmentation",
    "TabularLime",
    "attribution_order",
    "cosine_distance_to_all_on",
    "curve_auc",
    "curve_steps",
    "deletion_insertion_masks",
    "euclidean_distance_to_all_on",
    "exponential_kernel",
    "faithfulness_correlation",
    "faithfulness_subset_size",
    "faithfulness_subsets",
    "fit_quartile_bins",
    "overlay_png",
    "predict_in_batches",
    "segment_means",
    "subset_masks",
    "top_k_jaccard",
    "weighted_r2",
    "weighted_ridge",
]
