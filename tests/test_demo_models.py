"""The demo CNNs: architecture, ONNX export, content-keyed caching, and that they learned what they should."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from safetensors.torch import load_file

from interp_ops import demo_models
from interp_ops.datasets import load_samples, to_model_input
from interp_ops.demo_models import DEMO_INPUT, DEMO_LAYERS, ensure_demo_models, shapes_cnn, train_demo_model

TINY = dict(train_samples=64, epochs=1, batch_size=32, max_learning_rate=3e-3, val_samples=16)


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> dict[str, demo_models.DemoModel]:
    """The real demo models, trained once per session (about 35 s on two cores)."""
    return ensure_demo_models(tmp_path_factory.mktemp("demo-models"))


@pytest.fixture
def tiny_settings(monkeypatch):
    """Seconds-long training, for testing the caching rather than the learning."""
    monkeypatch.setattr(demo_models, "HYPERPARAMETERS", {"honest": TINY, "shortcut": TINY})


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


@pytest.mark.filterwarnings("ignore::FutureWarning")  # raised inside torch.onnx, not by our model
def test_onnx_export_matches_torch(tmp_path):
    model = shapes_cnn().eval()
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "shapes_cnn.onnx"
    torch.onnx.export(model, (x,), path)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(output, model(x).numpy(), atol=1e-4)


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


def test_real_models_come_from_the_cache_the_second_time(trained):
    weights = trained["honest"].weights_path
    modified = weights.stat().st_mtime_ns
    again = ensure_demo_models(weights.parent)
    assert again == trained
    assert weights.stat().st_mtime_ns == modified


def test_training_is_deterministic_and_restores_torch_settings(tmp_path, tiny_settings):
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    first = train_demo_model("shortcut", tmp_path / "a")
    second = train_demo_model("shortcut", tmp_path / "b")
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


def test_stale_or_corrupt_sidecar_means_retraining(tmp_path, tiny_settings):
    first = train_demo_model("honest", tmp_path)
    sidecar = tmp_path / "shapes_cnn_honest.json"
    assert train_demo_model("honest", tmp_path) == first, "a matching key returns the stored result"
    sidecar.write_text("{not json")
    retrained = train_demo_model("honest", tmp_path)
    assert retrained.cache_key == first.cache_key and retrained.train_seconds != first.train_seconds
    first.weights_path.unlink()
    assert train_demo_model("honest", tmp_path).weights_path.is_file()


def test_unknown_variant_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"variant 'cheater' is unknown; use one of \['honest', 'shortcut'\]"):
        train_demo_model("cheater", tmp_path)


def test_interp_ops_does_not_import_prefect():
    code = "import sys, interp_ops.datasets, interp_ops.demo_models; print('prefect' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
