"""Shared fixtures. Prefect gets a temporary home and one test server for the whole session."""

import atexit
import os
import shutil
import tempfile

os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="interp-audit-prefect-")
atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)  # each test process removes its own
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "False")

import logging  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

ASSETS = Path(__file__).parent / "assets"
sys.path.insert(0, str(ASSETS))


@pytest.fixture(scope="session")
def prefect_server():
    """One Prefect test server per session (its start-up costs ~15 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small torch workloads (renders of tiny models) run as fast on one thread, and stay fast when other
    processes share the two cores (with two threads, every small op then waits for a descheduled thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory, worker_id) -> Path:
    """A folder all pytest-xdist workers of this session share (this process's temp root when run without xdist)."""
    base = tmp_path_factory.getbasetemp()
    return base if worker_id == "master" else base.parent


@pytest.fixture(scope="session")
def trained(session_dir):
    """The real image demo models (honest, shortcut): the shipped ones (tests/assets/shipped_models.py), or, when
    the code changed since they were trained, trained once per session by the first worker that needs them."""
    from filelock import FileLock
    from shipped_models import copy_shipped

    from interp_ops.demo_models import ensure_demo_models

    models = session_dir / "demo-models"
    with FileLock(session_dir / "demo-models.lock"):
        if not models.exists():  # copied once: a second copy would overwrite what the first worker trained
            copy_shipped(models)
        return ensure_demo_models(models)


@pytest.fixture(scope="session")
def tabular_trained(tmp_path_factory):
    """The real tabular demo models, trained once per session (about a second)."""
    from interp_ops.demo_models import ensure_tabular_demo_models

    return ensure_tabular_demo_models(tmp_path_factory.mktemp("tabular-demo-models"))


def save_state_dict(module: torch.nn.Module, path: Path) -> Path:
    torch.save(module.state_dict(), path)
    return path


@pytest.fixture
def gray_spec(tmp_path):
    """A valid spec for a 1x28x28 grayscale user model, audited on RGB builtin shapes; returns a writer."""
    from user_models import gray_net

    weights = save_state_dict(gray_net(), tmp_path / "gray.pt")

    def write(**changes) -> Path:
        spec = {
            "name": "gray-audit",
            "seed": 3,
            "model": {
                "source": "torch",
                "name": "gray-net",
                "version": "7",
                "factory": f"{ASSETS / 'user_models.py'}:gray_net",
                "weights": weights.name,
                "input": {"shape": [1, 28, 28], "range": [0, 1], "mean": [0.5], "std": [0.5]},
                "layers": ["body.conv1", "body.act2"],
            },
            "data": "builtin:shapes?split=val&n=12",
            "contracts": {"onnx.max_abs_diff": 1.0e-4},
            "report": {"store": str(tmp_path / "reports")},
        }
        for dotted, value in changes.items():
            target = spec
            keys = dotted.split(".")
            for key in keys[:-1]:
                target = target[key]
            if value is None:
                target.pop(keys[-1], None)
            else:
                target[keys[-1]] = value
        path = tmp_path / "spec.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path

    return write


DEMO_CLASSES = ["circle", "square", "triangle"]


def demo_cnn_spec(
    tmp_path: Path,
    weights: Path,
    version: str,
    data: str,
    ops: dict,
    layers: list[str],
    *,
    class_names: list[str] | None = DEMO_CLASSES,
    **top_level,
) -> Path:
    """A spec of the demo shapes CNN (``weights``: a trained copy) on builtin ``data``, writing to tmp_path/reports;
    ``top_level`` keys (gates, contracts, name...) are added or replace the defaults. ``class_names=None``: none
    in model.input (then the data's names, if it has any, are used)."""
    model_input = {"shape": [3, 64, 64], "mean": [0.5] * 3, "std": [0.25] * 3}
    if class_names is not None:
        model_input["class_names"] = class_names
    spec = {
        "name": f"demo-v{version}",
        "seed": 0,
        "model": {
            "source": "torch",
            "name": "shapes-cnn",
            "version": version,
            "factory": "interp_ops.demo_models:shapes_cnn",
            "weights": str(weights),
            "input": model_input,
            "layers": layers,
        },
        "data": data,
        "ops": ops,
        "report": {"store": str(tmp_path / "reports")},
        **top_level,
    }
    path = tmp_path / f"spec-v{version}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def planted_mlp_spec(tmp_path: Path, weights: Path, data: str, ops: dict) -> Path:
    """A spec of the planted tabular MLP (``weights``: tabular_trained["tabular-planted"]) on builtin ``data``."""
    from interp_ops.demo_models import TABULAR_DEMO_FACTORY, TABULAR_DEMO_INPUT, TABULAR_DEMO_LAYERS

    spec = {
        "name": "planted",
        "model": {
            "source": "torch",
            "name": "planted-mlp",
            "version": "1",
            "factory": TABULAR_DEMO_FACTORY["tabular-planted"],
            "weights": str(weights),
            "input": TABULAR_DEMO_INPUT["tabular-planted"],
            "layers": TABULAR_DEMO_LAYERS,
        },
        "data": data,
        "ops": ops,
        "report": {"store": str(tmp_path / "reports")},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


# ----------------------------------------------------------------------- an S3-compatible server on 127.0.0.1

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "interp-audit-test",
    "AWS_SECRET_ACCESS_KEY": "interp-audit-test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on a free port of 127.0.0.1 for the module, and credentials it accepts in the environment
    (processes started meanwhile inherit them); stopped after. Stands in for a cloud's S3, which cannot run here."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    requests = logging.getLogger("werkzeug")  # one line per request: a failing test's output would drown in them
    level = requests.level
    requests.setLevel(logging.WARNING)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as env:
        for name, value in CREDENTIALS.items():
            env.setenv(name, value)
        env.delenv("AWS_ENDPOINT_URL", raising=False)
        yield f"http://{host}:{port}"
    server.stop()
    requests.setLevel(level)


def new_bucket(endpoint: str):
    """A fresh bucket: (boto3 client, bucket name, store URI naming the endpoint in its query)."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    bucket = f"audit-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return client, bucket, f"s3://{bucket}/reports?endpoint_override={endpoint}"


@pytest.fixture
def s3(s3_endpoint):
    return new_bucket(s3_endpoint)


def s3_keys(client, bucket: str, prefix: str = "") -> list[str]:
    """Every object's key in the bucket (under ``prefix``)."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def free_port() -> int:
    """A port of 127.0.0.1 that was free a moment ago (nobody listens there)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def store_is_empty(store: Path) -> bool:
    """No published or staged file anywhere in the store."""
    return not store.exists() or not any(p.is_file() for p in store.rglob("*"))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def pytest_collection_modifyitems(items):
    """Files with end-to-end (slow) tests run first: each file goes to one worker, and a long file handed out
    last would leave the other worker idle at the end."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)
