"""Two small CNNs with a known truth for demos and tests: one that learned shapes, one that learned a shortcut.

The shortcut model is trained on scenes whose corner patch gives the label away, and only for as long
as it takes to learn the patch; without the patch it falls to chance, which an audit should reveal.
Training takes seconds on a CPU and its result is cached under a key of everything it depends on.

Two small MLPs do the same for the tabular builtins: one for ``tabular-planted``, whose label depends on two
known features only, and one for ``breast_cancer`` (see ``ensure_tabular_demo_models``).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save
from torch import nn

from interp_ops import builtin_data, datasets, palette
from interp_ops.cache_dirs import write_atomically

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


def _paths(name: str, out_dir: Path) -> tuple[Path, Path]:
    stem = Path(out_dir) / name
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


# Rows of the training data whose model input goes into the cache key (see _data_probe).
PROBE_ROWS = 16


def _content_key(settings: dict) -> str:
    """Changes whenever the data, the model, the training code or its settings change.

    The generators' and the training code's sources are hashed whole; how data is read and converted is covered
    by the probe in ``settings["data"]``, so a refactor of the readers that keeps their output keeps the models."""
    digest = hashlib.sha256()
    for source in (builtin_data.__file__, palette.__file__, __file__):
        digest.update(Path(source).read_bytes())
    digest.update(json.dumps({**settings, "torch": torch.__version__}, sort_keys=True).encode())
    return digest.hexdigest()


def _data_probe(x: torch.Tensor, y: torch.Tensor) -> str:
    """sha256 of a few rows of model input and labels, as the readers and converters produce them today."""
    digest = hashlib.sha256(x.contiguous().numpy().tobytes())
    digest.update(y.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _model_input(uri: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    samples = datasets.load_samples(uri, Path("."), seed)
    x = datasets.to_model_input(
        samples, tuple(DEMO_INPUT["shape"]), tuple(DEMO_INPUT["range"]), DEMO_INPUT["mean"], DEMO_INPUT["std"]
    )
    return torch.from_numpy(x), torch.from_numpy(samples.labels)


@contextmanager
def _deterministic_cpu(max_threads: int) -> Iterator[None]:
    """Deterministic kernels on at most ``max_threads`` threads, restoring the caller's settings afterwards."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(min(threads, max_threads))
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


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
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


def _hyperparameters(table: dict[str, dict], name: str, what: str) -> dict:
    if name not in table:
        raise ValueError(f"{what} {name!r} is unknown; use one of {sorted(table)}")
    return table[name]


def _train_or_load(
    stem: str,
    out_dir: Path,
    identity: dict,
    fit: Callable[[], nn.Module],
    score: Callable[[nn.Module], tuple[float, float | None]],
    max_threads: int = MAX_THREADS,
) -> DemoModel:
    """The cached result when nothing it depends on has changed (``identity``, the code and the data); otherwise
    ``fit`` trains the model under deterministic kernels seeded with ``identity["seed"]``, ``score`` gives its
    validation accuracy (and its accuracy without the patch, where there is one), and both are saved as
    ``out_dir/<stem>.safetensors`` with a ``.json`` sidecar."""
    weights_path, metrics_path = _paths(stem, out_dir)
    key = _content_key(identity)
    cached = _cached(metrics_path, weights_path, key)
    if cached is not None:
        return cached

    with _deterministic_cpu(max_threads):
        torch.manual_seed(identity["seed"])
        started = time.perf_counter()
        model = fit()
        train_seconds = time.perf_counter() - started
        val_accuracy, without_patch = score(model)

    record = dict(
        cache_key=key,
        **identity,
        val_accuracy=val_accuracy,
        val_accuracy_without_patch=without_patch,
        train_seconds=train_seconds,
    )
    _save_trained(model, weights_path, metrics_path, record)
    return DemoModel(weights_path, val_accuracy, without_patch, train_seconds, key)


def _fit_shapes_cnn(variant: str, settings: dict, seed: int) -> nn.Module:
    x, y = _model_input(f"{TRAIN_DATA[variant]}&n={settings['train_samples']}", seed)
    model = shapes_cnn(len(builtin_data.CLASS_NAMES))
    _train(model, x, y, seed, settings)
    return model


def _score_shapes_cnn(model: nn.Module, variant: str, settings: dict, seed: int) -> tuple[float, float | None]:
    """Accuracy on fresh validation scenes of the variant's kind; for the shortcut model also without the patch."""
    val_n = f"split=val&n={settings['val_samples']}"
    if variant == "honest":
        return _accuracy(model, *_model_input(f"builtin:shapes?{val_n}", seed)), None
    return (
        _accuracy(model, *_model_input(f"builtin:shapes-shortcut?{val_n}", seed)),
        _accuracy(model, *_model_input(f"builtin:shapes-shortcut?{val_n}&patch=false", seed)),
    )


def train_demo_model(variant: Literal["honest", "shortcut"], out_dir: Path, seed: int = 0) -> DemoModel:
    """Train the variant, or return the cached result when nothing it depends on has changed."""
    settings = _hyperparameters(HYPERPARAMETERS, variant, "demo model variant")
    return _train_or_load(
        f"shapes_cnn_{variant}",
        out_dir,
        dict(
            variant=variant,
            seed=seed,
            hyperparameters=settings,
            data=_data_probe(*_model_input(f"{TRAIN_DATA[variant]}&n={PROBE_ROWS}", seed)),
        ),
        lambda: _fit_shapes_cnn(variant, settings, seed),
        lambda model: _score_shapes_cnn(model, variant, settings, seed),
    )


def _save_trained(model: nn.Module, weights_path: Path, metrics_path: Path, record: dict) -> None:
    """Weights first, then the sidecar that marks them valid for the cache key: a crash leaves no false hit."""
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    write_atomically(weights_path, lambda path: path.write_bytes(save(state)))
    write_atomically(metrics_path, lambda path: path.write_text(json.dumps(record, indent=2) + "\n"))


def ensure_demo_models(out_dir: Path) -> dict[str, DemoModel]:
    """Both demo models, trained on first use and read from the cache afterwards."""
    return {variant: train_demo_model(variant, out_dir) for variant in ("honest", "shortcut")}


# --- tabular demo models ------------------------------------------------------------------------

TabularDataset = Literal["tabular-planted", "breast_cancer"]
TABULAR_HIDDEN = 32
# How a spec declares them: model.input, model.factory (a zero-argument callable) and model.layers.
TABULAR_DEMO_INPUT = {
    "tabular-planted": dict(
        shape=[len(builtin_data.TABULAR_FEATURE_NAMES)], class_names=list(builtin_data.TABULAR_CLASS_NAMES)
    ),
    "breast_cancer": dict(shape=[30], class_names=["malignant", "benign"]),
}
TABULAR_DEMO_FACTORY = {
    "tabular-planted": "interp_ops.demo_models:planted_mlp",
    "breast_cancer": "interp_ops.demo_models:breast_cancer_mlp",
}
TABULAR_DEMO_LAYERS = ["hidden", "act"]
# Both builtins are model-ready (standardized), so the spec needs no mean/std.
TABULAR_TRAIN_DATA = {
    "tabular-planted": "builtin:tabular-planted?split=train",
    "breast_cancer": "builtin:breast_cancer?split=train",
}
# train_samples/val_samples None: the whole split. Validation uses the val split of the same seed.
TABULAR_HYPERPARAMETERS = {
    "tabular-planted": dict(train_samples=2000, epochs=30, batch_size=64, max_learning_rate=1e-2, val_samples=1000),
    "breast_cancer": dict(train_samples=None, epochs=60, batch_size=32, max_learning_rate=3e-3, val_samples=None),
}


class TabularMLP(nn.Module):
    """features -> Linear ``hidden`` -> ReLU ``act`` -> Linear ``out``; ONNX-exportable as is."""

    def __init__(self, features: int, num_classes: int = 2, hidden: int = TABULAR_HIDDEN):
        super().__init__()
        self.hidden = nn.Linear(features, hidden)
        self.act = nn.ReLU()
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.hidden(x)))


def tabular_mlp(features: int, num_classes: int = 2) -> nn.Module:
    """The tabular demo architecture, for standardized (features,) input."""
    return TabularMLP(features, num_classes)


def planted_mlp() -> nn.Module:
    """Spec factory for the ``tabular-planted`` demo model (8 features, 2 classes)."""
    return tabular_mlp(TABULAR_DEMO_INPUT["tabular-planted"]["shape"][0])


def breast_cancer_mlp() -> nn.Module:
    """Spec factory for the ``breast_cancer`` demo model (30 features, 2 classes)."""
    return tabular_mlp(TABULAR_DEMO_INPUT["breast_cancer"]["shape"][0])


def _with_n(uri: str, n: int | None) -> str:
    return uri if n is None else f"{uri}&n={n}"


def _tabular_input(uri: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    samples = datasets.load_samples(uri, Path("."), seed)
    x = datasets.to_model_input(samples, (samples.x.shape[1],))
    return torch.from_numpy(x), torch.from_numpy(samples.labels)


def tabular_val_accuracy(model: nn.Module, dataset: TabularDataset, seed: int = 0) -> float:
    """Accuracy on the validation rows that ``train_tabular_model`` reports."""
    uri = _with_n(f"builtin:{dataset}?split=val", TABULAR_HYPERPARAMETERS[dataset]["val_samples"])
    return _accuracy(model, *_tabular_input(uri, seed))


def _fit_tabular_mlp(dataset: TabularDataset, settings: dict, seed: int) -> nn.Module:
    x, y = _tabular_input(_with_n(TABULAR_TRAIN_DATA[dataset], settings["train_samples"]), seed)
    model = tabular_mlp(x.shape[1], len(TABULAR_DEMO_INPUT[dataset]["class_names"]))
    _train(model, x, y, seed, settings)
    return model


def train_tabular_model(dataset: TabularDataset, out_dir: Path, seed: int = 0) -> DemoModel:
    """Train the MLP for a tabular builtin, or return the cached result when nothing it depends on has changed.

    Weights go to ``out_dir/tabular_mlp_<dataset>.safetensors``, key and metrics to the ``.json`` beside them.
    """
    settings = _hyperparameters(TABULAR_HYPERPARAMETERS, dataset, "tabular demo data set")
    return _train_or_load(
        f"tabular_mlp_{dataset}",
        out_dir,
        dict(
            kind="tabular",
            dataset=dataset,
            seed=seed,
            hyperparameters=settings,
            data=_data_probe(*_tabular_input(_with_n(TABULAR_TRAIN_DATA[dataset], PROBE_ROWS), seed)),
            source=builtin_data.breast_cancer_digest().hex() if dataset == "breast_cancer" else None,
        ),
        lambda: _fit_tabular_mlp(dataset, settings, seed),
        lambda model: (tabular_val_accuracy(model, dataset, seed), None),
        max_threads=1,  # faster for so small a model, and the same sums everywhere
    )


def ensure_tabular_demo_models(out_dir: Path) -> dict[str, DemoModel]:
    """Both tabular demo models, trained on first use and read from the cache afterwards."""
    return {dataset: train_tabular_model(dataset, out_dir) for dataset in TABULAR_HYPERPARAMETERS}
