"""`interp-audit demo`: the demo models registered in a local MLflow registry and audited through the trigger path.

Version 1 is the honest CNN and version 2 the shortcut CNN. The watcher (served with the triggered audit in a
child process, as `interp-audit watch` runs in production) announces both versions, and each is audited once.
Without PREFECT_API_URL a temporary local Prefect server carries the events for the length of the demo.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from interp_audit import progress
from interp_audit.intake import tracking_uri
from interp_audit.spec import load_spec

SPEC = Path(__file__).resolve().parent.parent / "deployments" / "specs" / "shapes-registry-demo.yaml"
TIMEOUT_SECONDS = 900


def register_demo_models(models: dict, store: str) -> str:
    """Version 1 = honest, version 2 = shortcut, unless the local registry holds them already; returns its URI."""
    from safetensors.torch import load_file

    from interp_audit import registry
    from interp_ops.demo_models import shapes_cnn

    spec = load_spec(SPEC).spec
    uri = tracking_uri(spec.model, store)
    for variant in ("honest", "shortcut")[len(registry.list_versions(uri, spec.model.name)):]:
        module = shapes_cnn()
        module.load_state_dict(load_file(models[variant].weights_path))
        version = registry.log_model(module, spec.model.name, "interp_ops.demo_models:shapes_cnn", uri,
                                     tags={"demo_variant": variant})
        progress.step(f"registered {spec.model.name} v{version} ({variant}) in {uri}")
    return uri


@contextlib.contextmanager
def prefect_api() -> Iterator[str]:
    """The user's Prefect API, or a temporary local server with events and automations running."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield PREFECT_API_URL.value()
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start(timeout=180)
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        server.stop()


def audit_through_trigger(store: str) -> None:
    """Serve the watcher and the triggered audit, look at the registry once, and wait for both audits."""
    from prefect.deployments import run_deployment

    from flows.registry import published_run

    loaded = load_spec(SPEC)
    name = loaded.spec.name
    with prefect_api() as api_url:
        env = {**os.environ, "PREFECT_API_URL": api_url, "INTERP_AUDIT_STORE": store}
        served = subprocess.Popen([sys.executable, "-m", "flows.cli", "watch", str(SPEC), "--store", store,
                                   "--interval", "3600"], env=env, start_new_session=True)
        try:
            _wait_for_deployment(f"interp-audit-watch/{name}-watch", served)
            progress.step("watcher served; looking at the registry")
            run_deployment(f"interp-audit-watch/{name}-watch", timeout=300)
            deadline = time.monotonic() + TIMEOUT_SECONDS
            while not all(published_run(store, loaded.spec.model.name, v, loaded.sha256) for v in ("1", "2")):
                if served.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the triggered audits did not finish; see the output above")
                time.sleep(2)
        finally:
            os.killpg(served.pid, signal.SIGINT)
            served.wait(timeout=60)


def _wait_for_deployment(name: str, served: subprocess.Popen) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for _ in range(180):
            try:
                client.read_deployment_by_name(name)
                return
            except Exception:
                if served.poll() is not None:
                    raise RuntimeError("`interp-audit watch` stopped; see the output above") from None
                time.sleep(1)
    raise RuntimeError(f"deployment {name} did not appear in 180 s")
