"""Sharing the machine between tasks: GPU work holds a slot of the global ``gpu`` concurrency limit (one slot per
device) on the thread runner; on a Ray worker, Ray's resources do that job and each task keeps to its CPUs."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import torch
from prefect.concurrency.sync import concurrency

from tasks.limits import ensure_limit

GPU_LIMIT = "gpu"


def ensure_gpu_limit() -> None:
    """The ``gpu`` limit: one slot per visible device."""
    ensure_limit(GPU_LIMIT, max(torch.cuda.device_count(), 1))


def gpu_slot(device: str):
    """Hold a ``gpu`` slot while running on CUDA; a no-op on CPU."""
    if device.startswith("cuda"):
        return concurrency(GPU_LIMIT, occupy=1)
    return contextlib.nullcontext()


def ray_task_cpus() -> int | None:
    """The CPUs Ray assigned to the task this process runs, or None outside a Ray worker (ray is not even loaded
    there: it is an optional extra)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    if context.worker.mode != ray.WORKER_MODE:
        return None
    return max(1, int(context.get_assigned_resources().get("CPU", 1)))


@contextlib.contextmanager
def compute_share(device: str) -> Iterator[int]:
    """Run a task's computation on its share of the machine; yields the ONNX Runtime intra-op thread count for
    its sessions. On a Ray worker torch and ONNX Runtime keep to the CPUs Ray assigned the task, so two tasks on
    one node do not fight over cores, and torch's cached GPU memory is handed back afterwards; elsewhere their defaults stay (0: ONNX Runtime's own) and CUDA work holds
    a ``gpu`` slot."""
    cpus = ray_task_cpus()
    if cpus is None:
        with gpu_slot(device):
            yield 0
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(cpus)
    try:
        yield cpus
    finally:
        torch.set_num_threads(threads)
        if torch.cuda.is_initialized():  # the worker serves the next task, maybe on another GPU share
            torch.cuda.empty_cache()
