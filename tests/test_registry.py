"""interp_audit.registry against a real MLflow client on a real SQLite registry under tmp_path (no mocks)."""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient  # noqa: E402

from interp_audit.errors import SpecError  # noqa: E402
from interp_audit.intake import import_factory  # noqa: E402
from interp_audit.mlflow_connection import FAIL_FAST_ENV, RegistryUnavailable, default_tracking_uri  # noqa: E402
from interp_audit.registry import (  # noqa: E402
    fetch_model,
    list_versions,
    log_model,
    resolve_version,
    write_back,
)

ASSETS = Path(__file__).parent / "assets"

pytestmark = [
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SADeprecationWarning"),
]


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> str:
    """One SQLite registry for the module (creating its tables costs about a second); tests use their own names."""
    folder = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{folder / 'registry.db'}"
    MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments()  # create the tables once
    return uri


@pytest.fixture(autouse=True)
def no_global_mlflow_state(monkeypatch, tmp_path):
    """Nothing here may fall back to ~/mlruns or ./mlruns: clear MLflow's env and run from an empty folder."""
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", *FAIL_FAST_ENV):
        monkeypatch.delenv(key, raising=False)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    yield
    assert not (work / "mlruns").exists()


def client_for(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def register_files(uri: str, name: str, files: dict[str, bytes], tmp_path: Path) -> str:
    """Register a version holding exactly these files (as someone else's tooling might), through a run."""
    client = client_for(uri)
    experiment = client.get_experiment_by_name("handmade")
    experiment_id = (
        experiment.experiment_id
        if experiment
        else client.create_experiment(
            "handmade", artifact_location=str(Path(uri.removeprefix("sqlite:///")).parent / "handmade")
        )
    )
    folder = tmp_path / f"files-{name}"
    for relative, content in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(content)
    run = client.create_run(experiment_id)
    client.log_artifacts(run.info.run_id, str(folder), "model")
    client.set_terminated(run.info.run_id)
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    return client.create_model_version(name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id).version


def mlflow_experiment(uri: str, monkeypatch) -> str:
    """For MLflow's own fluent log_model: point the fluent API at the test registry and an experiment whose
    artifacts stay beside it."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = client_for(uri)
    experiment = client.get_experiment_by_name("mlflow-flavors")
    if experiment:
        return experiment.experiment_id
    root = Path(uri.removeprefix("sqlite:///")).parent / "mlflow-flavors"
    return client.create_experiment("mlflow-flavors", artifact_location=str(root))


def tiny_linear() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()


def rebuild(fetched) -> torch.nn.Module:
    """What the audit does with a state_dict version: build the factory's module and load the weights strictly."""
    from safetensors.torch import load_file

    module = import_factory(fetched.factory, Path("/"))()
    module.load_state_dict(load_file(fetched.path), strict=True)
    return module.eval()


def outputs(module: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return module(x).numpy()


def test_default_tracking_uri_respects_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert default_tracking_uri(str(tmp_path / "reports")) == "http://mlflow.example:5000"
    assert not (tmp_path / "reports").exists()

    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    uri = default_tracking_uri(str(tmp_path / "reports"))
    assert uri == f"sqlite:///{tmp_path / 'reports' / 'mlflow' / 'registry.db'}"
    assert (tmp_path / "reports" / "mlflow").is_dir()


def test_log_model_round_trip_rebuilds_the_same_module(registry, tmp_path):
    from interp_ops.demo_models import shapes_cnn

    torch.manual_seed(3)
    model = shapes_cnn().eval()
    version = log_model(
        model, "rt-shapes", "interp_ops.demo_models:shapes_cnn", tracking_uri=registry, tags={"team": "vision"}
    )
    assert version == "1"

    fetched = fetch_model(registry, "rt-shapes", version, tmp_path / "dl", trust_pickle=False)
    assert fetched.kind == "state_dict"
    assert fetched.path.endswith(".safetensors") and Path(fetched.path).is_relative_to(tmp_path / "dl")
    assert fetched.factory == "interp_ops.demo_models:shapes_cnn"

    rebuilt = rebuild(fetched)
    x = torch.rand(4, 3, 64, 64)
    np.testing.assert_array_equal(outputs(rebuilt, x), outputs(model, x))

    # A retried fetch into the same folder starts clean and finds the same file.
    again = fetch_model(registry, "rt-shapes", version, tmp_path / "dl", trust_pickle=False)
    assert again == fetched
    assert [p.name for p in (tmp_path / "dl").iterdir()] == ["rt-shapes-v1"]

    mv = client_for(registry).get_model_version("rt-shapes", version)
    assert mv.tags["team"] == "vision"
    assert mv.tags["interp_audit.factory"] == "interp_ops.demo_models:shapes_cnn"
    assert mv.tags["interp_audit.weights_sha256"] == fetched.sha256


def test_file_factory_travels_with_the_version(registry, tmp_path):
    from user_models import gray_net

    model = gray_net().eval()
    with torch.no_grad():
        model.head.bias.add_(0.5)  # not what the factory alone builds
    version = log_model(model, "rt-gray", f"{ASSETS / 'user_models.py'}:gray_net", tracking_uri=registry)

    fetched = fetch_model(registry, "rt-gray", version, tmp_path / "dl", trust_pickle=False)
    target, attr = fetched.factory.rsplit(":", 1)
    assert attr == "gray_net" and Path(target).is_relative_to(tmp_path / "dl") and Path(target).is_file()

    rebuilt = rebuild(fetched)
    x = torch.rand(2, 1, 28, 28)
    np.testing.assert_array_equal(outputs(rebuilt, x), outputs(model, x))


def test_copied_version_is_fetched_through_its_source_version(registry, tmp_path):
    """copy_model_version (promotion across registered models) leaves a models:/<name>/<version> source."""
    version = log_model(tiny_linear(), "copy-src", "user_models:tabular_mlp", tracking_uri=registry)
    copied = client_for(registry).copy_model_version(f"models:/copy-src/{version}", "copy-dst")
    original = fetch_model(registry, "copy-src", version, tmp_path / "dl", trust_pickle=False)
    fetched = fetch_model(registry, "copy-dst", str(copied.version), tmp_path / "dl", trust_pickle=False)
    assert fetched.kind == "state_dict" and fetched.sha256 == original.sha256
    assert fetched.factory == "user_models:tabular_mlp"


def test_resolve_version_number_latest_alias(registry):
    for _ in range(3):
        last = log_model(tiny_linear(), "rv-model", "user_models:tabular_mlp", tracking_uri=registry)
    assert last == "3"
    assert list_versions(registry, "rv-model") == ["1", "2", "3"]
    assert resolve_version(registry, "rv-model", "2") == "2"
    assert resolve_version(registry, "rv-model", "latest") == "3"
    client_for(registry).set_registered_model_alias("rv-model", "champion", "2")
    assert resolve_version(registry, "rv-model", "@champion") == "2"


def test_list_versions_sorts_numerically_and_is_empty_for_unknown_models(registry, tmp_path):
    assert list_versions(registry, "never-registered") == []
    client = client_for(registry)
    client.create_registered_model("many-versions")
    for _ in range(11):
        client.create_model_version("many-versions", str(tmp_path))
    assert list_versions(registry, "many-versions") == [str(v) for v in range(1, 12)]
    assert resolve_version(registry, "many-versions", "latest") == "11"


def test_missing_model_version_alias_are_spec_errors_listing_what_exists(registry):
    log_model(tiny_linear(), "miss-model", "user_models:tabular_mlp", tracking_uri=registry)
    log_model(tiny_linear(), "miss-model", "user_models:tabular_mlp", tracking_uri=registry)
    client_for(registry).set_registered_model_alias("miss-model", "staging", "1")

    with pytest.raises(SpecError, match=r"miss-model has no version 9; versions: 1, 2") as error:
        resolve_version(registry, "miss-model", "9")
    assert error.value.exit_code == 2
    with pytest.raises(SpecError, match=r"miss-model has no alias '@champion'; aliases: @staging \(version 1\)"):
        resolve_version(registry, "miss-model", "@champion")
    for version in ("1", "latest", "@champion"):
        with pytest.raises(SpecError, match=r"no registered model 'no-such-model'.*miss-model"):
            resolve_version(registry, "no-such-model", version)
    with pytest.raises(SpecError, match=r"miss-model has no version 9"):
        fetch_model(registry, "miss-model", "9", Path("dl"), trust_pickle=False)
    with pytest.raises(SpecError, match=r"'champion'.*not a version"):
        resolve_version(registry, "miss-model", "champion")


def test_onnx_flavor_version_is_fetched_as_onnx(registry, tmp_path, monkeypatch):
    import mlflow
    import mlflow.onnx
    import onnx
    import onnxruntime as ort

    model = tiny_linear()
    onnx_path = tmp_path / "tiny.onnx"
    torch.onnx.export(
        model,
        (torch.rand(1, 4),),
        str(onnx_path),
        dynamo=False,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
    )
    experiment_id = mlflow_experiment(registry, monkeypatch)
    with mlflow.start_run(experiment_id=experiment_id):
        info = mlflow.onnx.log_model(
            onnx.load(str(onnx_path)), name="model", registered_model_name="onnx-model", pip_requirements=["onnx"]
        )
    # MLflow 3 registers a logged model: the version's source is models:/m-<id>, resolved against our registry.
    assert (
        client_for(registry)
        .get_model_version("onnx-model", info.registered_model_version)
        .source.startswith("models:/")
    )

    fetched = fetch_model(registry, "onnx-model", "latest", tmp_path / "dl", trust_pickle=False)
    assert fetched.kind == "onnx" and fetched.path.endswith("model.onnx") and fetched.factory is None
    x = torch.rand(5, 4)
    session = ort.InferenceSession(fetched.path, providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": x.numpy()})[0], outputs(model, x), atol=1e-6)


def test_mlflow_pickled_pytorch_version_needs_trust(registry, tmp_path, monkeypatch):
    import mlflow
    import mlflow.pytorch

    model = tiny_linear()
    experiment_id = mlflow_experiment(registry, monkeypatch)
    with mlflow.start_run(experiment_id=experiment_id):
        mlflow.pytorch.log_model(
            model,
            name="model",
            registered_model_name="pickled-model",
            serialization_format="pickle",
            pip_requirements=["torch"],
        )

    with pytest.raises(SpecError, match=r"pickled-model version 1 holds a pickled torch module.*trust_pickle: true"):
        fetch_model(registry, "pickled-model", "1", tmp_path / "dl", trust_pickle=False)
    fetched = fetch_model(registry, "pickled-model", "1", tmp_path / "dl", trust_pickle=True)
    assert fetched.kind == "pickle" and fetched.path.endswith("data/model.pth")
    loaded = torch.load(fetched.path, weights_only=False)  # the caller's trusted load
    x = torch.rand(3, 4)
    np.testing.assert_array_equal(outputs(loaded, x), outputs(model, x))


class _Marker:
    """Unpickling this creates a file: proof that something ran code from a pickle."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_is_never_unpickled_while_fetching(registry, tmp_path):
    marker = tmp_path / "unpickled.marker"
    version = register_files(registry, "evil-model", {"model.pth": pickle.dumps(_Marker(str(marker)))}, tmp_path)

    with pytest.raises(SpecError, match=r"evil-model version 1 holds a pickled torch module \(model.pth"):
        fetch_model(registry, "evil-model", version, tmp_path / "dl", trust_pickle=False)
    assert not marker.exists()
    fetched = fetch_model(registry, "evil-model", version, tmp_path / "dl", trust_pickle=True)
    assert fetched.kind == "pickle" and fetched.path.endswith("model.pth")
    assert not marker.exists()


def test_plain_state_dict_torch_file_is_a_state_dict(registry, tmp_path):
    state_file = tmp_path / "weights.pt"
    torch.save(tiny_linear().state_dict(), state_file)
    version = register_files(registry, "plain-sd", {"weights.pt": state_file.read_bytes()}, tmp_path)
    fetched = fetch_model(registry, "plain-sd", version, tmp_path / "dl", trust_pickle=False)
    assert fetched.kind == "state_dict" and fetched.factory is None and fetched.path.endswith("weights.pt")


TORCH_FILES = {  # how a lone torch file is written -> whether it counts as a state dict
    "state dict": (lambda path: torch.save(tiny_linear().state_dict(), path), True),
    "checkpoint of tensors, numbers and sizes": (
        lambda path: torch.save({"model": tiny_linear().state_dict(), "epoch": 3, "shape": torch.Size([4])}, path),
        True,
    ),
    "whole module": (lambda path: torch.save(tiny_linear(), path), False),
    "code in a torch.save archive": (lambda path: torch.save({"w": _Marker(str(path) + ".marker")}, path), False),
    "plain pickle, not an archive": (lambda path: path.write_bytes(pickle.dumps({"w": 1})), False),
    "legacy torch.save format": (
        lambda path: torch.save(tiny_linear().state_dict(), path, _use_new_zipfile_serialization=False),
        False,
    ),
    # torch.load(weights_only=True) cannot read protocol 4 either: unsupported opcodes
    "pickle protocol 4": (lambda path: torch.save(tiny_linear().state_dict(), path, pickle_protocol=4), False),
}


@pytest.mark.parametrize("how", TORCH_FILES)
def test_lone_torch_files_are_judged_without_unpickling(tmp_path, how):
    from interp_audit.model_artifacts import holds_only_tensors

    write, plain = TORCH_FILES[how]
    path = tmp_path / "weights.pt"
    write(path)
    assert holds_only_tensors(path) is plain
    assert not Path(str(path) + ".marker").exists()


def test_mlflow_default_torch_export_version_is_explained(registry, tmp_path, monkeypatch):
    import mlflow
    import mlflow.pytorch

    experiment_id = mlflow_experiment(registry, monkeypatch)
    with mlflow.start_run(experiment_id=experiment_id):
        mlflow.pytorch.log_model(
            tiny_linear(),
            name="model",
            registered_model_name="pt2-model",
            input_example=np.zeros((2, 4), dtype=np.float32),
            pip_requirements=["torch"],
        )
    with pytest.raises(SpecError, match=r"pt2-model version 1 holds a torch.export program"):
        fetch_model(registry, "pt2-model", "1", tmp_path / "dl", trust_pickle=True)


def test_unrelated_files_are_a_spec_error_naming_them(registry, tmp_path):
    version = register_files(registry, "notes-model", {"notes.txt": b"hi", "data/table.csv": b"a,b\n"}, tmp_path)
    with pytest.raises(SpecError, match=r"notes-model version 1 holds no model.*data/table.csv, notes.txt"):
        fetch_model(registry, "notes-model", version, tmp_path / "dl", trust_pickle=True)


def test_write_back_tags_and_alias(registry):
    version = log_model(tiny_linear(), "wb-model", "user_models:tabular_mlp", tracking_uri=registry)
    write_back(registry, "wb-model", version, status="passed", run_id="run-123", report="/reports/run-123")
    client = client_for(registry)
    tags = client.get_model_version("wb-model", version).tags
    assert tags["interp_audit.status"] == "passed"
    assert tags["interp_audit.run_id"] == "run-123"
    assert tags["interp_audit.report"] == "/reports/run-123"
    assert client.get_registered_model("wb-model").aliases == {}

    write_back(registry, "wb-model", version, status="passed", run_id="run-124", report="r", alias="@audited")
    assert str(client.get_model_version_by_alias("wb-model", "audited").version) == version
    assert client.get_model_version("wb-model", version).tags["interp_audit.run_id"] == "run-124"
    with pytest.raises(SpecError, match=r"wb-model has no version 7"):
        write_back(registry, "wb-model", "7", status="failed", run_id="r", report="r")


def test_unreachable_registry_fails_fast(tmp_path):
    uri = "http://127.0.0.1:9"
    for call in (
        lambda: resolve_version(uri, "m", "latest"),
        lambda: list_versions(uri, "m"),
        lambda: fetch_model(uri, "m", "1", tmp_path / "dl", trust_pickle=False),
        lambda: write_back(uri, "m", "1", status="passed", run_id="r", report="r"),
    ):
        start = time.monotonic()
        with pytest.raises(RegistryUnavailable, match=r"http://127.0.0.1:9") as error:
            call()
        assert time.monotonic() - start < 5
        assert error.value.exit_code == 3
    for key in FAIL_FAST_ENV:  # the fail-fast settings are lifted after the call
        assert key not in os.environ


def test_user_http_settings_win_over_fail_fast(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    with pytest.raises(RegistryUnavailable):
        list_versions("http://127.0.0.1:9", "m")
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "60"
