"""Global concurrency limits: GPU work holds a slot of ``gpu`` (one slot per device)."""

from __future__ import annotations

import contextlib

import torch
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency

GPU_LIMIT = "gpu"


def ensure_limit(name: str, slots: int) -> None:
    """Create a global concurrency limit unless it exists (an operator may have set it already)."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))
            except ObjectAlreadyExists:  # created meanwhile by a concurrent run
                pass


def ensure_gpu_limit() -> None:
    """The ``gpu`` limit: one slot per visible device."""
    ensure_limit(GPU_LIMIT, max(torch.cuda.device_count(), 1))


def gpu_slot(device: str):
    """Hold a ``gpu`` slot while running on CUDA; a no-op on CPU."""
    if device.startswith("cuda"):
        return concurrency(GPU_LIMIT, occupy=1)
    return contextlib.nullcontext()
