"""Step 3, the tally, and step 4, the IoU, with label ids and categories as in NetDissect-Lite:

- I[u, c]: activated pixels of u that carry label c in any mask layer (a whole-image label: all of them);
- G[c]: pixels carrying c (sh * sw per image for a whole-image label);
- A[u, k]: activated pixels of u on those images where u's activated pixels touch at least one pixel labelled
  with category k, or where the image has a whole-image label of category k. (NetDissect-Lite's rule. It is
  narrower than "images that carry category k": activated pixels that touch no labelled pixel of k do not count
  against k's labels.)
- IoU[u, c] = I / (A[u, category(c)] + G[c] - I + 1e-10); category(c) is c's primary category (the one where its
  coverage in c_<category>.csv is largest).

Pass 2 reads only the masks and tallies the maps kept by pass 1 (``threshold``), vectorised over maps, pixels and
labels; which pixels of a map are active comes from ``upsample.ActivePixels``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from interp_ops.concepts import MAX_MASK_LABEL, ConceptBatch, ConceptSet
from interp_ops.dissection.prefetch import prefetched
from interp_ops.dissection.threshold import ThresholdedMaps
from interp_ops.dissection.upsample import ActivePixels

IOU_EPSILON = 1e-10  # NetDissect-Lite's guard against an empty union
UPSAMPLE_CHUNK = 1 << 23  # output pixels per dense upsampling call (32 MB of float32)
SPARSE_CHUNK = 1 << 16  # maps per sparse evaluation call


class LabelIndex:
    """Dense label indexing (1..L, 0 = none), each label's primary category, and lookups for mask values."""

    def __init__(self, concepts: ConceptSet, device: torch.device):
        self.ids = np.array(sorted(concepts.labels), dtype=np.int64)
        self.categories = list(concepts.categories)
        self.size = len(self.ids) + 1
        dense = np.zeros(MAX_MASK_LABEL + 1, dtype=np.int64)
        small = self.ids <= MAX_MASK_LABEL
        dense[self.ids[small]] = np.arange(1, self.size)[small]
        self.mask_lookup = dense.astype(np.int32)  # label id -> dense index (numpy: used in the reader thread)
        self.ids_are_dense = bool(np.array_equal(self.ids, np.arange(1, self.size)))  # then a mask is its own index
        self.dense_of = {int(label): i + 1 for i, label in enumerate(self.ids)}
        category_of = np.zeros((self.size, len(self.categories)), dtype=np.int64)
        for label, dense_index in self.dense_of.items():
            category_of[dense_index, self.categories.index(concepts.label_category[label])] = 1
        self.category_of = category_of  # (L+1, C) one-hot primary category: NetDissect-Lite's labelcat
        self.category_of_on_device = torch.from_numpy(category_of).to(device)


@dataclass
class BatchLabels:
    """One batch's labels, dense: pixel layers of every pixel-level category stacked, whole-image labels one-hot;
    and the batch's share of the label totals G."""

    pixels: torch.Tensor | None  # (B, K, S) int32, K over all pixel-level categories' layers
    image_onehot: torch.Tensor  # (B, L+1) int64, 0/1
    image_category: torch.Tensor  # (B, C) bool: has a whole-image label of category k
    label_pixels: torch.Tensor  # (L+1,) int64: pixels per label (sh * sw per image for a whole-image label), 0 for none


def _batch_labels(batch: ConceptBatch, labels: LabelIndex, mask_size: tuple[int, int]) -> dict[str, np.ndarray | None]:
    """The BatchLabels of a batch, as numpy arrays: computed in the reader thread (numpy releases the GIL)."""
    pixels = None
    if batch.pixel_labels:
        stacked = np.concatenate(list(batch.pixel_labels.values()), axis=1)
        stacked = stacked.reshape(len(batch), stacked.shape[1], -1)
        pixels = stacked if labels.ids_are_dense else labels.mask_lookup[stacked]
    onehot = np.zeros((len(batch), labels.size), dtype=np.int64)
    for per_image in batch.image_labels.values():
        for position, image_labels in enumerate(per_image):
            onehot[position, [labels.dense_of[label] for label in image_labels]] = 1
    label_pixels = onehot.sum(axis=0) * (mask_size[0] * mask_size[1])
    if pixels is not None:
        label_pixels += np.bincount(pixels.ravel(), minlength=labels.size)
    label_pixels[0] = 0
    return {
        "pixels": pixels,
        "image_onehot": onehot,
        "image_category": onehot @ labels.category_of > 0,
        "label_pixels": label_pixels,
    }


def _to_device(arrays: Mapping[str, np.ndarray | None], device: torch.device) -> BatchLabels:
    return BatchLabels(
        **{name: None if array is None else torch.from_numpy(array).to(device) for name, array in arrays.items()}
    )


class Tally:
    """NetDissect-Lite's counts for one layer: I (``intersection``; Lite's tally_both) and A per category
    (``activated_per_category``; Lite's tally_units_cat). G is shared by all layers."""

    def __init__(self, units: int, labels: LabelIndex, device: torch.device):
        self.labels = labels
        self.intersection = torch.zeros((units, labels.size), dtype=torch.int64, device=device)
        self.activated_per_category = torch.zeros((units, len(labels.categories)), dtype=torch.int64, device=device)

    def add(
        self,
        kept: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        threshold_below: torch.Tensor,
        first_image: int,
        batch: BatchLabels,
        active_pixels: ActivePixels,
    ) -> None:
        """Count the ``kept`` maps (images, units, maps) of ``batch``, whose first image is ``first_image``."""
        kept_image, kept_unit, kept_maps = kept
        start, stop = 0, len(kept_unit)
        labels = self.labels
        pixels_per_map = active_pixels.size[0] * active_pixels.size[1]
        chunk = max(1, UPSAMPLE_CHUNK // pixels_per_map) if not active_pixels.sparse else SPARSE_CHUNK
        for chunk_start in range(start, stop, chunk):
            chunk_stop = min(chunk_start + chunk, stop)
            map_count = chunk_stop - chunk_start
            unit = kept_unit[chunk_start:chunk_stop]
            image = kept_image[chunk_start:chunk_stop] - first_image
            map_index, pixel = active_pixels(kept_maps[chunk_start:chunk_stop], threshold_below[unit])
            activated = torch.bincount(map_index, minlength=map_count)  # (m,) activated pixels per map
            if batch.pixels is not None:
                _, mask_layers, area = batch.pixels.shape
                in_masks = (image.index_select(0, map_index) * (mask_layers * area) + pixel)[:, None] + torch.arange(
                    0, mask_layers * area, area, device=pixel.device
                )
                under = batch.pixels.flatten().take(in_masks)  # (P, K) dense labels under activated pixels
                index = (map_index[:, None] * labels.size + under).flatten()
                counts = torch.bincount(index, minlength=map_count * labels.size).view(map_count, labels.size)
                counts[:, 0] = 0
                touched = (counts > 0).long() @ labels.category_of_on_device > 0  # (m, C)
            else:
                counts = torch.zeros((map_count, labels.size), dtype=torch.int64, device=unit.device)
                touched = torch.zeros((map_count, len(labels.categories)), dtype=torch.bool, device=unit.device)
            counts += batch.image_onehot[image] * activated[:, None]
            touched |= batch.image_category[image]
            self.intersection.index_add_(0, unit, counts)
            self.activated_per_category.index_add_(0, unit, touched.long() * activated[:, None])

    def iou(self, label_pixels: np.ndarray) -> np.ndarray:
        """(U, L) float64 IoU of every unit with every label (label 0 excluded), given the totals G."""
        intersection = self.intersection.cpu().numpy().astype(np.float64)
        activated = self.activated_per_category.cpu().numpy().astype(np.float64) @ self.labels.category_of.T
        return (intersection / (activated + label_pixels[None, :] - intersection + IOU_EPSILON))[:, 1:]


def tally_pass(
    concepts: ConceptSet,
    thresholded: Mapping[str, ThresholdedMaps],
    active_pixels: Mapping[str, ActivePixels],
    labels: LabelIndex,
    batch_size: int,
    device: torch.device,
    report: Callable[[int], None],
    steps_before: int,
) -> tuple[dict[str, Tally], np.ndarray]:
    """Pass 2, masks only: the tallies of every layer's kept maps, and the label totals G (float64).

    Stacking the masks, looking up labels and counting G happen in the reader thread (see ``prefetch``).
    ``report(step)`` after each batch, counting on from ``steps_before``.
    """
    tallies = {layer: Tally(len(kept.thresholds), labels, device) for layer, kept in thresholded.items()}
    label_pixels = torch.zeros(labels.size, dtype=torch.int64, device=device)
    prepared = (
        (batch, _batch_labels(batch, labels, concepts.mask_size))
        for batch in concepts.batches(batch_size, images=False)
    )
    with contextlib.closing(prefetched(prepared)) as batches:
        for step, (batch, arrays) in enumerate(batches, start=steps_before + 1):
            first, last = int(batch.indices[0]), int(batch.indices[-1]) + 1
            batch_labels = _to_device(arrays, device)
            label_pixels += batch_labels.label_pixels
            for layer, kept in thresholded.items():
                maps = kept.of_images(first, last)
                if len(maps[1]):
                    tallies[layer].add(maps, kept.threshold_below, first, batch_labels, active_pixels[layer])
            report(step)
    return tallies, label_pixels.cpu().numpy().astype(np.float64)
