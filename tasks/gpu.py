"""GPU work is guarded by the Prefect global concurrency limit ``gpu`` (one slot per device)."""

from __future__ import annotations

import contextlib

import torch
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency

GPU_LIMIT = "gpu"


def ensure_gpu_limit() -> None:
    """Create the ``gpu`` limit with one slot per visible device, unless an operator already set one."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(GPU_LIMIT)
        except ObjectNotFound:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=GPU_LIMIT, limit=max(torch.cuda.device_count(), 1))
            )


def gpu_slot(device: str):
    """Hold a ``gpu`` slot while running on CUDA; a no-op on CPU."""
    if device.startswith("cuda"):
        return concurrency(GPU_LIMIT, occupy=1)
    return contextlib.nullcontext()
