"""The demo CNNs and tabular MLPs: architecture, ONNX export, content-keyed caching, and that they learned
what they should."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from shipped_models import RESEEDED, copy_shipped

from interp_ops import builtin_data, datasets, demo_models, onnx_bundle
from interp_ops.datasets import load_samples, to_model_input
from interp_ops.demo_models import (
    DEMO_INPUT,
    DEMO_LAYERS,
    TABULAR_DEMO_FACTORY,
    TABULAR_DEMO_INPUT,
    TABULAR_DEMO_LAYERS,
    ensure_demo_models,
    ensure_tabular_demo_models,
    shapes_cnn,
    tabular_mlp,
    train_demo_model,
    train_tabular_model,
)

TINY = dict(train_samples=64, epochs=1, batch_size=32, max_learning_rate=3e-3, val_samples=16)


@pytest.fixture
def tiny_settings(monkeypatch):
    """Seconds-long training, for testing the caching rather than the learning."""
    monkeypatch.setattr(demo_models, "HYPERPARAMETERS", {"honest": TINY, "shortcut": TINY})


@pytest.fixture
def training_calls(monkeypatch):
    """How many models were really trained (calls of demo_models._train) since the test started."""
    calls = []
    train = demo_models._train

    def counting(model, *args, **kwargs):
        calls.append(type(model).__name__)
        return train(model, *args, **kwargs)

    monkeypatch.setattr(demo_models, "_train", counting)
    return calls


def _accuracy(weights_path: Path, uri: str) -> float:
    model = shapes_cnn()
    model.load_state_dict(load_file(weights_path))
    model.eval()
    samples = load_samples(uri, Path("."), seed=0)
    x = to_model_input(samples, DEMO_INPUT["shape"], DEMO_INPUT["range"], DEMO_INPUT["mean"], DEMO_INPUT["std"])
    with torch.no_grad():
        predictions = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    return float((predictions == samples.labels).mean())


def test_architecture_and_audit_layers():
    model = shapes_cnn()
    modules = dict(model.named_modules())
    for name in DEMO_LAYERS:
        assert isinstance(modules[name], torch.nn.Conv2d), name
    assert isinstance(modules["classifier"], torch.nn.Linear)
    assert model(torch.zeros(2, *DEMO_INPUT["shape"])).shape == (2, 3)
    assert shapes_cnn(num_classes=5)(torch.zeros(1, 3, 64, 64)).shape == (1, 5)


def assert_onnx_matches_torch(model: torch.nn.Module, x: torch.Tensor, atol: float) -> None:
    """Through the same export and session path the audit uses."""
    session = onnx_bundle.make_session(onnx_bundle.export_torch(model, tuple(x.shape[1:]), []), "cpu")
    with torch.no_grad():
        np.testing.assert_allclose(onnx_bundle.run_session(session, x.numpy())["logits"], model(x).numpy(), atol=atol)


def test_onnx_export_matches_torch():
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert_onnx_matches_torch(shapes_cnn().eval(), x, atol=1e-4)


def test_honest_model_learned_the_shapes(trained):
    honest = trained["honest"]
    assert honest.val_accuracy >= 0.9
    assert honest.val_accuracy_without_patch is None
    assert honest.weights_path.name == "shapes_cnn_honest.safetensors"
    assert _accuracy(honest.weights_path, "builtin:shapes?split=val&n=300") == pytest.approx(honest.val_accuracy)
    patched_accuracy = _accuracy(honest.weights_path, "builtin:shapes-shortcut?split=val&n=300")
    assert patched_accuracy >= 0.9, "the patch does not fool a model that learned the shapes"


def test_shortcut_model_relies_on_the_patch(trained):
    shortcut = trained["shortcut"]
    assert shortcut.val_accuracy >= 0.95
    assert shortcut.val_accuracy_without_patch <= 0.45
    assert _accuracy(shortcut.weights_path, "builtin:shapes-shortcut?split=val&n=300&patch=false") == pytest.approx(
        shortcut.val_accuracy_without_patch
    )


def test_real_models_come_from_the_cache_the_second_time(trained, training_calls):
    weights = trained["honest"].weights_path
    modified = weights.stat().st_mtime_ns
    again = ensure_demo_models(weights.parent)
    assert again == trained
    assert training_calls == []
    assert weights.stat().st_mtime_ns == modified


def test_the_shipped_models_are_the_current_codes(tmp_path, training_calls):
    """The tests audit shipped weights (tests/assets/shipped_models.py): they must be what the current data, model
    and training code give, or the tests would prove an older model."""
    current = ensure_demo_models(copy_shipped(tmp_path / "seed0"))
    reseeded = train_demo_model("honest", copy_shipped(tmp_path / "reseeded", RESEEDED), seed=RESEEDED)
    assert training_calls == [], "the shipped models are stale: run `make test-assets` and commit them"
    assert current["honest"].cache_key != reseeded.cache_key


def test_training_is_deterministic_and_restores_torch_settings(tmp_path, tiny_settings, training_calls):
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    first = train_demo_model("shortcut", tmp_path / "a")
    second = train_demo_model("shortcut", tmp_path / "b")
    assert training_calls == ["ShapesCNN", "ShapesCNN"]  # two trainings compared, not one and its cache
    assert first.weights_path.read_bytes() == second.weights_path.read_bytes()
    assert first.cache_key == second.cache_key
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == (threads, deterministic)


def test_cache_key_follows_variant_seed_and_settings(tmp_path, tiny_settings, monkeypatch):
    honest = train_demo_model("honest", tmp_path)
    shortcut = train_demo_model("shortcut", tmp_path)
    reseeded = train_demo_model("honest", tmp_path, seed=1)
    assert len({honest.cache_key, shortcut.cache_key, reseeded.cache_key}) == 3
    monkeypatch.setattr(demo_models, "HYPERPARAMETERS", {"honest": {**TINY, "epochs": 2}, "shortcut": TINY})
    assert train_demo_model("honest", tmp_path).cache_key != reseeded.cache_key


def test_cache_key_follows_what_the_readers_produce(tmp_path, tiny_settings, monkeypatch):
    """The key holds a probe of the model input itself: a reader whose output changes retrains the models."""
    before = train_demo_model("honest", tmp_path).cache_key
    convert = datasets.to_model_input
    monkeypatch.setattr(datasets, "to_model_input", lambda *args, **kwargs: convert(*args, **kwargs) * 0.5)
    assert train_demo_model("honest", tmp_path).cache_key != before


def test_stale_or_corrupt_sidecar_means_retraining(tmp_path, tiny_settings, training_calls):
    first = train_demo_model("honest", tmp_path)
    assert len(training_calls) == 1
    sidecar = tmp_path / "shapes_cnn_honest.json"
    assert train_demo_model("honest", tmp_path) == first, "a matching key returns the stored result"
    assert len(training_calls) == 1, "served from the cache, not trained again"
    sidecar.write_text("{not json")
    retrained = train_demo_model("honest", tmp_path)
    assert len(training_calls) == 2, "a corrupt sidecar means training again"
    assert retrained.cache_key == first.cache_key
    assert json.loads(sidecar.read_text())["cache_key"] == first.cache_key  # the sidecar is rewritten
    first.weights_path.unlink()
    assert train_demo_model("honest", tmp_path).weights_path.is_file()
    assert len(training_calls) == 3, "missing weights mean training again"


def test_unknown_variant_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"variant 'cheater' is unknown; use one of \['honest', 'shortcut'\]"):
        train_demo_model("cheater", tmp_path)


# --- tabular demo models ------------------------------------------------------------------------


def _factory(dataset: str) -> torch.nn.Module:
    module_name, attr = TABULAR_DEMO_FACTORY[dataset].split(":")
    return getattr(importlib.import_module(module_name), attr)()


def _tabular_predictions(weights_path: Path, dataset: str, x: np.ndarray) -> np.ndarray:
    model = _factory(dataset)
    model.load_state_dict(load_file(weights_path), strict=True)
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(x)).argmax(dim=1).numpy()


def test_tabular_architecture_layers_and_spec_constants(tmp_path):
    model = tabular_mlp(8)
    modules = dict(model.named_modules())
    assert isinstance(modules["hidden"], torch.nn.Linear) and modules["hidden"].in_features == 8
    assert isinstance(modules["act"], torch.nn.ReLU)
    assert isinstance(modules["out"], torch.nn.Linear) and modules["out"].out_features == 2
    assert set(TABULAR_DEMO_LAYERS) <= set(modules)
    assert tabular_mlp(5, num_classes=4)(torch.zeros(3, 5)).shape == (3, 4)
    assert set(TABULAR_DEMO_INPUT) == set(TABULAR_DEMO_FACTORY) == {"tabular-planted", "breast_cancer"}
    for dataset, declared in TABULAR_DEMO_INPUT.items():
        samples = load_samples(f"builtin:{dataset}?n=4", tmp_path, seed=0)
        assert declared["shape"] == [samples.x.shape[1]]
        assert declared["class_names"] == samples.class_names
        assert _factory(dataset)(torch.from_numpy(samples.x)).shape == (4, len(samples.class_names))
    assert TABULAR_DEMO_INPUT["tabular-planted"]["shape"] == [8]
    assert TABULAR_DEMO_INPUT["breast_cancer"]["shape"] == [30]


@pytest.mark.filterwarnings("ignore::FutureWarning")  # raised inside torch.onnx, not by our model
def test_tabular_onnx_export_matches_torch():
    x = torch.randn(5, 30, generator=torch.Generator().manual_seed(0))
    assert_onnx_matches_torch(_factory("breast_cancer").eval(), x, atol=1e-5)


def test_planted_model_learned_the_planted_rule(tabular_trained):
    planted = tabular_trained["tabular-planted"]
    assert planted.val_accuracy >= 0.95
    assert planted.val_accuracy_without_patch is None
    assert planted.weights_path.name == "tabular_mlp_tabular-planted.safetensors"
    samples = load_samples("builtin:tabular-planted?split=val&n=1000", Path("."), seed=0)
    predictions = _tabular_predictions(planted.weights_path, "tabular-planted", samples.x)
    assert (predictions == samples.labels).mean() == pytest.approx(planted.val_accuracy)
    rng = np.random.default_rng(0)
    for j, name in enumerate(samples.feature_names):
        shuffled = samples.x.copy()
        shuffled[:, j] = rng.permutation(shuffled[:, j])
        agreement = (_tabular_predictions(planted.weights_path, "tabular-planted", shuffled) == predictions).mean()
        if name in builtin_data.PLANTED_FEATURES:
            assert agreement < 0.85, f"{name} is planted, the model must need it"
        else:
            assert agreement > 0.97, f"{name} is noise, the model must ignore it"


def test_breast_cancer_model_reaches_its_target(tabular_trained):
    model = tabular_trained["breast_cancer"]
    assert model.val_accuracy >= 0.93
    assert model.weights_path.name == "tabular_mlp_breast_cancer.safetensors"
    samples = load_samples("builtin:breast_cancer?split=val", Path("."), seed=0)
    predictions = _tabular_predictions(model.weights_path, "breast_cancer", samples.x)
    assert (predictions == samples.labels).mean() == pytest.approx(model.val_accuracy)
    assert len(samples.x) == 171, "reported on the whole val split"


def test_tabular_models_come_from_the_cache_the_second_time(tabular_trained, training_calls):
    weights = tabular_trained["breast_cancer"].weights_path
    modified = weights.stat().st_mtime_ns
    again = ensure_tabular_demo_models(weights.parent)
    assert again == tabular_trained
    assert training_calls == []
    assert weights.stat().st_mtime_ns == modified
    sidecar = json.loads(weights.with_suffix(".json").read_text())
    assert sidecar["cache_key"] == tabular_trained["breast_cancer"].cache_key
    assert sidecar["val_accuracy"] == tabular_trained["breast_cancer"].val_accuracy
    assert not list(weights.parent.glob("shapes_cnn_*")), "the image demo models are not trained here"


def test_tabular_training_is_deterministic_keyed_and_restores_torch_settings(tmp_path, tabular_trained, training_calls):
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    again = train_tabular_model("breast_cancer", tmp_path / "a")
    assert training_calls == ["TabularMLP"]  # trained here, compared with the session's training
    assert again.weights_path.read_bytes() == tabular_trained["breast_cancer"].weights_path.read_bytes()
    assert again.cache_key == tabular_trained["breast_cancer"].cache_key
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == (threads, deterministic)
    reseeded = train_tabular_model("breast_cancer", tmp_path / "b", seed=1)
    keys = {again.cache_key, reseeded.cache_key, tabular_trained["tabular-planted"].cache_key}
    assert len(keys) == 3
    assert reseeded.weights_path.read_bytes() != again.weights_path.read_bytes()


def test_unknown_tabular_data_set_names_the_choices(tmp_path):
    choices = r"\['breast_cancer', 'tabular-planted'\]"
    with pytest.raises(ValueError, match=rf"data set 'iris' is unknown; use one of {choices}"):
        train_tabular_model("iris", tmp_path)


def test_interp_ops_does_not_import_prefect():
    code = "import sys, interp_ops.datasets, interp_ops.demo_models; print('prefect' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
