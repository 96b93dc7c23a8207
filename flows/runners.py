"""Where an audit's tasks run: Prefect's thread pool in the flow's process (``thread``, the default), or a Ray
cluster through prefect-ray (``ray``, see ``flows.ray_runner``).

The runner is how, not what: it is chosen when a flow is called, never written into the spec, so the spec, its
hash, the tasks' cache keys and the published tables are the same on either. This module loads neither Prefect
nor Ray: the command line imports it for its options.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class Runner(str, enum.Enum):
    thread = "thread"
    ray = "ray"


@dataclass(frozen=True)
class RunnerChoice:
    """The runner, and on Ray the cluster's address (None: a local Ray for the flow) and the GPUs a GPU-bound task
    asks for (None: 1 where the cluster has GPUs, else 0); both are ignored on the thread runner."""

    runner: Runner = Runner.thread
    ray_address: str | None = None
    gpus_per_task: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "runner", Runner(self.runner))

    def applied_to(self, audit_flow, store_uri: str):
        """The flow itself on the thread runner (task results in Prefect's local storage: one machine); on Ray, the
        flow with an ``AuditRayTaskRunner`` and its task results beside the report at ``store_uri``, where every
        worker that reaches the store reads them (flows/result_storage.py)."""
        if self.runner is Runner.thread:
            return audit_flow
        from flows.ray_runner import AuditRayTaskRunner
        from flows.result_storage import task_result_storage

        return audit_flow.with_options(
            task_runner=AuditRayTaskRunner(self.ray_address, self.gpus_per_task),
            result_storage=task_result_storage(store_uri),
            persist_result=False,
        )

    def parameters(self) -> dict:
        """As the parameters of a flow that takes them (``audit_on_runner``, ``audit_registered_version``)."""
        return {"runner": self.runner.value, "ray_address": self.ray_address, "gpus_per_task": self.gpus_per_task}


def _ray_runner():
    """The running flow's ``AuditRayTaskRunner``, or None on any other runner (or outside a flow)."""
    from prefect.context import FlowRunContext

    ray_runner = sys.modules.get("flows.ray_runner")  # loaded by `RunnerChoice.applied_to` whenever a flow runs on Ray
    context = FlowRunContext.get()
    runner = context.task_runner if context else None
    return runner if ray_runner is not None and isinstance(runner, ray_runner.AuditRayTaskRunner) else None


def task_resources(gpu: bool):
    """What the tasks submitted inside ask their runner for: on Ray a CPU, and a GPU share when ``gpu``; on the
    thread runner nothing (its GPU tasks hold the ``gpu`` concurrency limit instead, tasks/gpu.py)."""
    runner = _ray_runner()
    return contextlib.nullcontext() if runner is None else runner.resources(gpu)


def fenced_by(exports: list) -> list:
    """What a torch task must wait for among the torch ``exports`` submitted beside it. torch.export switches
    oneDNN off for its whole process while it traces (and two exports at once break its tracing state), so on the
    thread runner, where every task shares the flow's process, torch compute beside an export would use other
    kernels and its floats would depend on timing: it waits for them all. A Ray worker runs one task at a time, so there nothing waits (a task waiting on Ray would
    hold a worker idle, and Ray would start another beside it)."""
    return exports if _ray_runner() is None else []


def shipping(store_uri: str) -> Callable[[Any], Any]:
    """How big task inputs travel: on Ray each is written once to the report store and tasks get a ref (read once
    per worker: interp_audit/blobs.py) instead of a pickled copy per submission; on the thread runner, as they are.
    Either way a task's cache key is the same."""
    if _ray_runner() is None:
        return lambda value: value
    return functools.partial(by_reference, store_uri)


def by_reference(store_uri: str, value: Any) -> Any:
    """``value`` with its bytes or sample array written to the store at ``store_uri`` and replaced by a ref (inside
    ``ModelInputs`` too); any other value as it is."""
    import numpy as np

    from interp_audit.blobs import put_array, put_blob
    from interp_audit.inputs import ModelInputs

    if isinstance(value, bytes):
        return put_blob(store_uri, value)
    if isinstance(value, np.ndarray):
        return put_array(store_uri, value)
    if isinstance(value, ModelInputs):
        return dataclasses.replace(value, x=put_array(store_uri, value.x[:]))  # an on-disk SampleFile read whole
    return value
