"""What the TCAV tests (tests/test_tcav_ops.py) and benchmark (benchmarks/tcav_bench.py) share: the demo's scenes as
model input, and Captum's classifier interface around our CAV fit, so that Captum's TCAV runs on our CAVs."""

import numpy as np
import torch
from captum.concept._utils.classifier import Classifier

from interp_ops import builtin_data
from interp_ops.datasets import to_model_input
from interp_ops.demo_models import DEMO_INPUT
from interp_ops.samples import Samples
from interp_ops.tcav import train_cav

DEMO = dict(
    shape=tuple(DEMO_INPUT["shape"]),
    value_range=tuple(DEMO_INPUT["range"]),
    mean=DEMO_INPUT["mean"],
    std=DEMO_INPUT["std"],
)


def model_input(images: np.ndarray, shape, value_range, mean, std) -> np.ndarray:
    samples = Samples(ids=[str(i) for i in range(len(images))], x=images, labels=None, masks=None, class_names=None)
    return to_model_input(samples, shape, value_range, mean, std)


def scenes(n: int, seed: int, **model_input_settings) -> np.ndarray:
    return model_input(builtin_data.shapes("val", n, seed)[0], **model_input_settings)


def with_corner_patch(images: np.ndarray, class_index: int) -> np.ndarray:
    """The scenes with the colour that gives ``class_index`` away painted in the corner, as shapes-shortcut does."""
    patched = images.copy()
    patched[:, : builtin_data.PATCH_SIZE, : builtin_data.PATCH_SIZE] = builtin_data.PATCH_COLORS[class_index]
    return patched


def scenes_of_class(class_index: int, n: int, seed: int, patch: bool, **model_input_settings) -> np.ndarray:
    images, _, labels = builtin_data.shapes("val", 8 * n, seed, patch=patch)
    chosen = images[labels == class_index][:n]
    assert len(chosen) == n
    return model_input(chosen, **model_input_settings)


class CaptumCav(Classifier):
    """Captum's classifier interface around ``train_cav``, so Captum's TCAV uses our CAVs: Captum hands over its
    own (torch) activations, the concept's rows first (the experimental set's first concept)."""

    def __init__(self, seed: int):
        self.seed = seed
        self.cav = None
        self.labels: list[int] = []

    def train_and_eval(self, dataloader, **kwargs):
        batches = list(dataloader)
        x = torch.cat([inputs for inputs, _ in batches]).numpy()
        y = torch.cat([labels for _, labels in batches]).numpy()
        concept = int(y[0])
        self.cav = train_cav(x[y == concept], x[y != concept], self.seed)
        self.labels = [concept, int(y[y != concept][0])]
        return {"accs": torch.tensor(self.cav.accuracy)}

    def weights(self) -> torch.Tensor:
        direction = torch.from_numpy(self.cav.direction).float()
        return torch.stack([direction, -direction])

    def classes(self) -> list[int]:
        return self.labels
