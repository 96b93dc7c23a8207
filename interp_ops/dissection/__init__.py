"""Network dissection (Bau et al. 2017), computing what NetDissect-Lite computes, number for number, in a stream.

For every unit u of an audited layer and every concept label c of a Broden-format concept set:

1. Threshold (``threshold``): T_u, the ``1 - quantile`` quantile of all of u's raw activations, exactly as
   ``np.percentile`` gives it, from a running top-k in one forward pass; the maps that can exceed T_u are kept on disk.
2. Upsample (``upsample``): each kept map bilinearly to the mask size, as PIL does; its active pixels are those
   above T_u. A map whose raw maximum is not above T_u is skipped (NetDissect-Lite's own test; bilinear weights
   are convex, so its upsampled map could not exceed T_u anyway).
3. Tally (``tally``): over one pass of the masks, intersections I[u, c], label areas G[c] and activated areas
   A[u, category] by NetDissect-Lite's rules.
4. IoU[u, c] = I / (A + G - I). A unit's best concept is its label of largest IoU; it is a detector when that IoU
   >= iou_threshold (0.04). The tables (``tables``) and the random-weights baseline (``baseline``) follow.

Which NetDissect-Lite: the threshold is that of CSAILVision/NetDissect-Lite's ``feature_operation.py`` up to
commit 0896577 (2018-01-17), the last whose ``quantile_threshold`` is ``np.percentile(features, 100 * (1 -
quantile))`` over all features held in memory. From commit 87757a9 (2018-01-18) to the repository's last commit
(2163454, 2019) it is ``util/vecquantile.QuantileVector``, a randomized streaming sketch read out at
``readout(1000)[:, int(1000 * (1 - quantile) - 1)]`` (the 994/999 quantile for 0.005, not 0.995), so those
revisions' thresholds, and IoUs with them, are approximations of ours. Upsampling (``imresize(mode='F')``) and
the tally rules are the same in both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from interp_ops.concepts import ConceptBatch, ConceptSet
from interp_ops.datasets import Samples, to_model_input
from interp_ops.dissection.result import DissectionError, DissectionResult
from interp_ops.dissection.tables import (
    DEFAULT_IOU_THRESHOLD,
    DEFAULT_TALLY_FLOOR,
    concept_tally,
    detector_summary,
    detectors,
    results_tables,
)
from interp_ops.dissection.tally import LabelIndex, Tally, tally_pass
from interp_ops.dissection.threshold import (
    exact_quantile_threshold,
    threshold_pass,
    top_values_needed,
)
from interp_ops.dissection.upsample import ActivePixels, upsample_maps

__all__ = [
    "DEFAULT_IOU_THRESHOLD",
    "DEFAULT_QUANTILE",
    "DEFAULT_TALLY_FLOOR",
    "DissectionError",
    "DissectionResult",
    "concept_tally",
    "detector_summary",
    "detectors",
    "dissect",
    "exact_quantile_threshold",
    "results_tables",
    "top_values_needed",
    "upsample_maps",
]

DEFAULT_QUANTILE = 0.005


def dissect(
    session,
    concepts: ConceptSet,
    layers: Sequence[str],
    *,
    input_shape: Sequence[int],
    value_range: tuple[float, float] = (0.0, 1.0),
    mean: list[float] | None = None,
    std: list[float] | None = None,
    quantile: float = DEFAULT_QUANTILE,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
    device: str | None = None,
) -> dict[str, DissectionResult]:
    """Dissect ``layers`` (outputs of the ONNX Runtime ``session``) on ``concepts``; one result per layer.

    Concept images (RGB in [0, 1]) become model input through ``datasets.to_model_input(input_shape, value_range,
    mean, std)``, so a grayscale or differently sized model is dissected on the same concept set. ``progress``
    is called with (batches done, batches in all) over both passes. ``device`` runs the tallies there (default:
    CUDA when torch sees it, else CPU); the model runs wherever its session runs.
    """
    _check(session, concepts, layers, quantile, batch_size, input_shape)
    target = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    layers = list(layers)
    batches = -(-len(concepts) // batch_size)
    report = (lambda done: progress(done, 2 * batches)) if progress is not None else (lambda done: None)
    with _one_torch_thread(target), torch.no_grad():
        # 1. threshold: one pass of the images through the model
        model_inputs = _model_inputs(concepts, batch_size, tuple(input_shape), tuple(value_range), mean, std)
        thresholded = threshold_pass(session, model_inputs, layers, len(concepts), quantile, target, report)
        try:
            # 2. upsample: the active pixels of each kept map at the mask size
            active_pixels = {
                layer: ActivePixels(kept.map_size, concepts.mask_size, target) for layer, kept in thresholded.items()
            }
            # 3. tally: one pass of the masks
            labels = LabelIndex(concepts, target)
            tallies, label_pixels = tally_pass(
                concepts, thresholded, active_pixels, labels, batch_size, target, report, steps_before=batches
            )
        finally:
            for kept in thresholded.values():
                kept.spill.close()
        # 4. IoU
        return {
            layer: _result(layer, kept.thresholds, tallies[layer], label_pixels, labels)
            for layer, kept in thresholded.items()
        }


def _model_inputs(
    concepts: ConceptSet, batch_size: int, input_shape: tuple[int, ...], value_range: tuple[float, float], mean, std
) -> Iterator[tuple[ConceptBatch, np.ndarray]]:
    for batch in concepts.batches(batch_size, masks=False):
        samples = Samples(
            ids=[str(i) for i in batch.indices], x=batch.images, labels=None, masks=None, class_names=None
        )
        yield batch, to_model_input(samples, input_shape, value_range, mean, std)


def _result(
    layer: str, thresholds: np.ndarray, tally: Tally, label_pixels: np.ndarray, labels: LabelIndex
) -> DissectionResult:
    iou = tally.iou(label_pixels)
    best = iou.argmax(axis=1)
    return DissectionResult(
        layer=layer,
        thresholds=thresholds,
        iou=iou,
        label_ids=labels.ids.copy(),
        best_label=labels.ids[best],
        best_iou=iou[np.arange(len(iou)), best],
    )


def _check(session, concepts: ConceptSet, layers: Sequence[str], quantile: float, batch_size: int, input_shape) -> None:
    if not 0.0 < quantile < 0.5:
        raise DissectionError(
            f"dissection.quantile={quantile} must lie strictly between 0 and 0.5: it is the fraction of each "
            "unit's activations counted as active; NetDissect uses 0.005"
        )
    if batch_size < 1:
        raise DissectionError(f"dissection batch_size={batch_size}; give a batch size of at least 1")
    if not layers:
        raise DissectionError("dissection.layers is empty; name at least one convolutional layer to dissect")
    if len(set(layers)) != len(layers):
        raise DissectionError(f"dissection.layers {list(layers)} names a layer twice; name each once")
    outputs = [output.name for output in session.get_outputs()]
    unknown = [layer for layer in layers if layer not in outputs]
    if unknown:
        raise DissectionError(
            f"dissection.layers: {unknown} not among the model's outputs {outputs[1:]}; dissect an audited layer "
            "(model.layers) or export the model with these layers"
        )
    if len(concepts) == 0 or not concepts.labels:
        raise DissectionError(
            "dissection.concepts: the concept set holds no images or no labels; give a Broden "
            "folder with images and labelled masks, or builtin:concepts"
        )
    if len(tuple(input_shape)) != 3:
        raise DissectionError(
            f"model.input.shape {list(input_shape)}: dissection needs an image model with input [C, H, W]"
        )


@contextlib.contextmanager
def _one_torch_thread(device: torch.device) -> Iterator[None]:
    """The bookkeeping is many small tensor operations between model calls: on CPU, torch's intra-op thread pool
    costs more in synchronisation than it gains, and fights the model's own threads for the cores (measurements in
    benchmarks/README.md). The caller's setting is restored afterwards; other threads keep theirs."""
    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
