"""Two small CNNs with a known truth for demos and tests: one that learned shapes, one that learned a shortcut.

The shortcut model is trained on scenes whose corner patch gives the label away, and only for as long
as it takes to learn the patch; without the patch it falls to chance, which an audit should reveal.
Training takes seconds on a CPU and its result is cached under a key of everything it depends on.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save
from torch import nn

from interp_ops import builtin_data, datasets

DEMO_INPUT = dict(shape=[3, 64, 64], range=[0, 1], mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
DEMO_LAYERS = ["features.4", "features.8", "features.12"]
TRAIN_DATA = {"honest": "builtin:shapes?split=train", "shortcut": "builtin:shapes-shortcut?split=train"}
# The shortcut model gets one epoch: enough to learn the patch, too little to learn the shapes as well.
HYPERPARAMETERS = {
    "honest": dict(train_samples=3000, epochs=5, batch_size=64, max_learning_rate=3e-3, val_samples=300),
    "shortcut": dict(train_samples=3000, epochs=1, batch_size=64, max_learning_rate=3e-3, val_samples=300),
}
MAX_THREADS = 2


class ShapesCNN(nn.Module):
    """Four conv blocks, global average pooling and a linear classifier; ONNX-exportable as is."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        blocks: list[nn.Module] = []
        for in_channels, out_channels, pool in [(3, 16, True), (16, 32, True), (32, 64, True), (64, 64, False)]:
            blocks += [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU()]
            blocks += [nn.MaxPool2d(2)] if pool else []
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


def shapes_cnn(num_classes: int = 3) -> nn.Module:
    """The demo architecture for (3, 64, 64) input normalized as in DEMO_INPUT."""
    return ShapesCNN(num_classes)


@dataclass(frozen=True)
class DemoModel:
    """Where a trained demo model's weights are, and what it scored on fresh validation scenes."""

    weights_path: Path
    val_accuracy: float
    val_accuracy_without_patch: float | None
    train_seconds: float
    cache_key: str


def _paths(variant: str, out_dir: Path) -> tuple[Path, Path]:
    stem = Path(out_dir) / f"shapes_cnn_{variant}"
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def _cache_key(variant: str, seed: int) -> str:
    """Changes whenever the data, the model, the training code or its settings change."""
    digest = hashlib.sha256()
    for source in (builtin_data.__file__, datasets.__file__, __file__):
        digest.update(Path(source).read_bytes())
    settings = dict(variant=variant, seed=seed, hyperparameters=HYPERPARAMETERS[variant], torch=torch.__version__)
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()


def _model_input(uri: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    samples = datasets.load_samples(uri, Path("."), seed)
    x = datasets.to_model_input(
        samples, tuple(DEMO_INPUT["shape"]), tuple(DEMO_INPUT["range"]), DEMO_INPUT["mean"], DEMO_INPUT["std"]
    )
    return torch.from_numpy(x), torch.from_numpy(samples.labels)


@contextmanager
def _deterministic_cpu() -> Iterator[None]:
    """Deterministic kernels on at most MAX_THREADS threads, restoring the caller's settings afterwards."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(min(threads, MAX_THREADS))
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int, settings: dict) -> None:
    batch_size, epochs = settings["batch_size"], settings["epochs"]
    steps_per_epoch = len(x) // batch_size
    optimizer = torch.optim.Adam(model.parameters(), lr=settings["max_learning_rate"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings["max_learning_rate"], total_steps=epochs * steps_per_epoch
    )
    order = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        permutation = torch.randperm(len(x), generator=order)
        for step in range(steps_per_epoch):
            batch = permutation[step * batch_size : (step + 1) * batch_size]
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()


def _accuracy(model: nn.Module, uri: str, seed: int) -> float:
    x, y = _model_input(uri, seed)
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


def _cached(metrics_path: Path, weights_path: Path, key: str) -> DemoModel | None:
    if not (metrics_path.is_file() and weights_path.is_file()):
        return None
    try:
        record = json.loads(metrics_path.read_text())
        if record["cache_key"] != key:
            return None
        return DemoModel(
            weights_path=weights_path,
            val_accuracy=record["val_accuracy"],
            val_accuracy_without_patch=record["val_accuracy_without_patch"],
            train_seconds=record["train_seconds"],
            cache_key=key,
        )
    except (ValueError, KeyError, TypeError):  # a corrupt sidecar means: train again
        return None


def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Readers in other processes see either the old file or the complete new one."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    write(partial)
    os.replace(partial, path)


def train_demo_model(variant: Literal["honest", "shortcut"], out_dir: Path, seed: int = 0) -> DemoModel:
    """Train the variant, or return the cached result when nothing it depends on has changed."""
    if variant not in HYPERPARAMETERS:
        raise ValueError(f"demo model variant {variant!r} is unknown; use one of {sorted(HYPERPARAMETERS)}")
    weights_path, metrics_path = _paths(variant, out_dir)
    key = _cache_key(variant, seed)
    cached = _cached(metrics_path, weights_path, key)
    if cached is not None:
        return cached

    settings = HYPERPARAMETERS[variant]
    val_n = f"split=val&n={settings['val_samples']}"
    with _deterministic_cpu():
        torch.manual_seed(seed)
        started = time.perf_counter()
        x, y = _model_input(f"{TRAIN_DATA[variant]}&n={settings['train_samples']}", seed)
        model = shapes_cnn(len(builtin_data.CLASS_NAMES))
        _train(model, x, y, seed, settings)
        train_seconds = time.perf_counter() - started
        if variant == "honest":
            val_accuracy, without_patch = _accuracy(model, f"builtin:shapes?{val_n}", seed), None
        else:
            val_accuracy = _accuracy(model, f"builtin:shapes-shortcut?{val_n}", seed)
            without_patch = _accuracy(model, f"builtin:shapes-shortcut?{val_n}&patch=false", seed)

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    _write_atomically(weights_path, lambda path: path.write_bytes(save(state)))
    record = dict(
        cache_key=key,
        variant=variant,
        seed=seed,
        hyperparameters=settings,
        val_accuracy=val_accuracy,
        val_accuracy_without_patch=without_patch,
        train_seconds=train_seconds,
    )
    _write_atomically(metrics_path, lambda path: path.write_text(json.dumps(record, indent=2) + "\n"))
    return DemoModel(weights_path, val_accuracy, without_patch, train_seconds, key)


def ensure_demo_models(out_dir: Path) -> dict[str, DemoModel]:
    """Both demo models, trained on first use and read from the cache afterwards."""
    return {variant: train_demo_model(variant, out_dir) for variant in ("honest", "shortcut")}
