"""Sharing the machine between tasks: on the thread runner GPU work holds a slot of the global ``gpu`` concurrency
limit (one slot per device) and CPU work one of ``CPU_TASKS`` slots of the process; on a Ray worker, Ray's
resources do that job and each task keeps to its CPUs."""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
from collections.abc import Iterator

import torch
from prefect.concurrency.sync import concurrency

from tasks.limits import ensure_limit

GPU_LIMIT = "gpu"
# Compute tasks running at once on the CPU, in one audit process. Each already spreads over every core (ONNX
# Runtime's and torch's thread pools), so more at once buy no speed but each holds its session, model and
# batches: an audit of 64 LIME batches once held all 64 (3 GB for the demo CNN). Two let one task's Python-side
# work (segmentation, regressions, PNGs) overlap another's model calls.
CPU_TASKS = int(os.environ.get("INTERP_AUDIT_CPU_TASKS", "2"))
_cpu_slots = threading.BoundedSemaphore(max(1, CPU_TASKS))
MALLOC_ARENAS = 2  # glibc's malloc otherwise gives each of the pool's threads an arena of its own (up to 8 x cores)
_M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's malloc.h


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): their allocators keep no per-thread arenas of this kind
        return None


def limit_malloc_arenas() -> None:
    """Share ``MALLOC_ARENAS`` malloc arenas between this process's threads (as ``MALLOC_ARENA_MAX`` would).

    Each task thread would get an arena, and an arena keeps what its thread freed: after a few tasks the process
    held their peaks at once (the demo audit: 1.29 GB with an arena per thread, 1.10 GB with two). Called when
    an audit starts, before its task threads exist; a no-op where the C library is not glibc."""
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(_M_ARENA_MAX, MALLOC_ARENAS)


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the system (glibc's ``malloc_trim``), so a finished task's buffers do
    not stay counted while the next one runs; a no-op elsewhere."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def ensure_gpu_limit() -> None:
    """The ``gpu`` limit: one slot per visible device."""
    ensure_limit(GPU_LIMIT, max(torch.cuda.device_count(), 1))


def compute_slot(device: str):
    """Hold a ``gpu`` slot while running on CUDA, one of the process's ``CPU_TASKS`` slots on the CPU."""
    if device.startswith("cuda"):
        return concurrency(GPU_LIMIT, occupy=1)
    return _cpu_slots


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
    one node do not fight over cores, and torch's cached GPU memory is handed back afterwards; elsewhere their
    defaults stay (0: ONNX Runtime's own) and the task holds a compute slot (``compute_slot``)."""
    cpus = ray_task_cpus()
    if cpus is None:
        with compute_slot(device):
            try:
                yield 0
            finally:
                release_freed_memory()
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(cpus)
    try:
        yield cpus
    finally:
        torch.set_num_threads(threads)
        if torch.cuda.is_initialized():  # the worker serves the next task, maybe on another GPU share
            torch.cuda.empty_cache()
