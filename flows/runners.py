"""Where an audit's tasks run: Prefect's thread pool in the flow's process (``thread``, the default), or a Ray
cluster through prefect-ray (``ray``, see ``flows.ray_runner``).

The runner is how, not what: it is chosen when a flow is called, never written into the spec, so the spec, its
hash, the tasks' cache keys and the published tables are the same on either. This module loads neither Prefect
nor Ray: the command line imports it for its options.
"""

from __future__ import annotations

import contextlib
import enum
import sys
from dataclasses import dataclass


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

    def applied_to(self, audit_flow):
        """The flow itself on the thread runner; on Ray, the same flow with an ``AuditRayTaskRunner``."""
        if self.runner is Runner.thread:
            return audit_flow
        from flows.ray_runner import AuditRayTaskRunner

        return audit_flow.with_options(task_runner=AuditRayTaskRunner(self.ray_address, self.gpus_per_task))

    def parameters(self) -> dict:
        """As the parameters of a flow that takes them (``audit_on_runner``, ``audit_registered_version``)."""
        return {"runner": self.runner.value, "ray_address": self.ray_address, "gpus_per_task": self.gpus_per_task}


def task_resources(gpu: bool):
    """What the tasks submitted inside ask their runner for: on Ray a CPU, and a GPU share when ``gpu``; on the
    thread runner nothing (its GPU tasks hold the ``gpu`` concurrency limit instead, tasks/gpu.py)."""
    from prefect.context import FlowRunContext

    ray_runner = sys.modules.get("flows.ray_runner")  # loaded by `RunnerChoice.applied_to` whenever a flow runs on Ray
    context = FlowRunContext.get()
    runner = context.task_runner if context else None
    if ray_runner is None or not isinstance(runner, ray_runner.AuditRayTaskRunner):
        return contextlib.nullcontext()
    return runner.resources(gpu)
