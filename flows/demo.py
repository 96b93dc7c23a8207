"""`interp-audit demo`: the demo models registered in a local MLflow registry and audited through the trigger path.

The story of a review: version 1 (the honest CNN) is registered, audited and approved by a reviewer; then
version 2 (the shortcut CNN) is registered and audited against the approved version 1, and the spec's gates
catch its shortcut. The watcher (served with the triggered audit in a child process, as `interp-audit watch`
runs in production) announces each version, and each is audited once. Without PREFECT_API_URL a temporary local
Prefect server carries the events for the length of the demo. The demo ends with the HTML report of version 2.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from flows.prefect_api import die_with_parent, prefect_api
from interp_audit import progress
from interp_audit.intake import tracking_uri
from interp_audit.spec import load_spec

SPEC = Path(__file__).resolve().parent.parent / "deployments" / "specs" / "shapes-registry-demo.yaml"
TIMEOUT_SECONDS = 900


VARIANTS = ("honest", "shortcut")  # registered as versions 1 and 2
REVIEWER = "demo-reviewer"


def register_demo_model(models: dict, store: str, variant: str) -> str:
    """Register the variant as the next version unless the local registry holds it already; its version."""
    from safetensors.torch import load_file

    from interp_audit import registry
    from interp_ops.demo_models import shapes_cnn

    spec = load_spec(SPEC).spec
    uri = tracking_uri(spec.model, store)
    version = str(VARIANTS.index(variant) + 1)
    if version not in registry.list_versions(uri, spec.model.name):
        module = shapes_cnn()
        module.load_state_dict(load_file(models[variant].weights_path))
        version = registry.log_model(
            module, spec.model.name, "interp_ops.demo_models:shapes_cnn", uri, tags={"demo_variant": variant}
        )
        progress.step(f"registered {spec.model.name} v{version} ({variant}) in {uri}")
    return version


def review_story(models: dict, store: str) -> dict:
    """Register, audit and approve version 1, then register and audit version 2; returns version 2's run."""
    from prefect.deployments import run_deployment

    from flows.registry import published_run
    from interp_audit.report import approval, review_run

    loaded = load_spec(SPEC)
    name, model = loaded.spec.name, loaded.spec.model.name
    with prefect_api() as api_url:
        env = {**os.environ, "PREFECT_API_URL": api_url, "INTERP_AUDIT_STORE": store}
        since = datetime.now(UTC)
        served = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "watch", str(SPEC), "--store", store, "--interval", "3600"],
            env=env,
            preexec_fn=die_with_parent,
        )
        try:
            _wait_for_deployments(
                [f"interp-audit-watch/{name}-watch", f"interp-audit-registry-version/{name}"], served, since
            )
            progress.step("watcher served")
            runs = {}
            for variant in VARIANTS:
                version = register_demo_model(models, store, variant)
                progress.step(f"looking at the registry for v{version} ({variant})")
                run_deployment(f"interp-audit-watch/{name}-watch", timeout=300)
                deadline = time.monotonic() + TIMEOUT_SECONDS
                while not (run := published_run(store, model, version, loaded.sha256)):
                    if served.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("the triggered audit did not finish; see the output above")
                    time.sleep(2)
                _wait_for_audits_to_finish(f"interp-audit-registry-version/{name}", since, served)
                runs[variant] = run
                if variant == "honest" and run["status"] == "passed" and approval(store, run) is None:
                    review_run(
                        store,
                        run["run_id"],
                        approve=True,
                        reviewer=REVIEWER,
                        comment="demo: the honest model, approved as the baseline for later versions",
                    )
                    progress.step(
                        f"v{version} approved by {REVIEWER} (interp-audit review {run['run_id'][:8]} --approve)"
                    )
        finally:
            os.killpg(served.pid, signal.SIGINT)
            served.wait(timeout=60)
    return runs["shortcut"]


def _wait_for_deployments(names: list[str], served: subprocess.Popen, since: datetime) -> None:
    """Until the served process has (re)registered every deployment: one left by an earlier demo on the same
    Prefect database still carries that demo's parameters (its report store, say)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        for _ in range(180):
            try:
                if all(client.read_deployment_by_name(name).updated >= since for name in names):
                    return
            except ObjectNotFound:
                pass
            if served.poll() is not None:
                raise RuntimeError("`interp-audit watch` stopped; see the output above")
            time.sleep(1)
    raise RuntimeError(f"deployments {', '.join(names)} were not served within 180 s")


def _wait_for_audits_to_finish(deployment: str, since: datetime, served: subprocess.Popen) -> None:
    """Until every audit this demo triggered has reached a final state. A run is published before its flow ends
    (it still releases its version's slot and writes the verdict back), and stopping the watcher in between would
    leave that run unfinished."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
    )

    deadline = time.monotonic() + TIMEOUT_SECONDS
    with get_client(sync_client=True) as client:
        deployment_id = client.read_deployment_by_name(deployment).id
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                flow_run_filter=FlowRunFilter(expected_start_time=FlowRunFilterExpectedStartTime(after_=since)),
            )
            if all(run.state is not None and run.state.is_final() for run in runs):
                return
            if served.poll() is not None:
                raise RuntimeError("`interp-audit watch` stopped; see the output above")
            time.sleep(1)
    raise RuntimeError(f"the audits triggered on {deployment} did not finish within {TIMEOUT_SECONDS} s")
