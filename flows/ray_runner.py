"""The audit's task runner on Ray: prefect-ray's ``RayTaskRunner``, with what an audit adds to it.

Imported only when a flow runs on Ray (``ray`` and ``prefect-ray`` are the optional ``[ray]`` extra).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket

import ray
from prefect.settings import get_current_settings
from prefect_ray import RayTaskRunner
from prefect_ray.context import remote_options

from flows.logs import RUN_LOG_SETTINGS
from interp_audit.errors import AuditError

CONNECT_TIMEOUT_SECONDS = 10
CPUS_PER_TASK = 1
S3_LOCATION_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")


class AuditRayTaskRunner(RayTaskRunner):
    """prefect-ray's runner, plus four things an audit needs.

    - ``address``: ``None`` starts a local Ray instance (``ray.init("local")``) that ends with the flow, even where
      a cluster runs on this machine; ``auto`` joins the cluster started here (``ray start --head``), else fails;
      ``host:port`` or ``ray://host:port`` joins that cluster.
    - An address nobody answers fails within seconds with the address in the message; Ray itself waits for good.
    - Ray's worker processes get the Prefect API URL and the settings the tasks read (``worker_env``) through the
      job's ``runtime_env``: without them they would start Prefect servers of their own, and their task runs,
      results and cache would not be the flow's.
    - ``resources``: what each task asks Ray for; a GPU-bound one a share of ``gpus_per_task`` GPUs (``None``:
      one where the cluster has GPUs, none where it has none).
    """

    def __init__(self, address: str | None = None, gpus_per_task: float | None = None):
        self.ray_address, self.gpus_per_task = address, gpus_per_task
        self.gpu_share = 0.0  # what a GPU-bound task asks for, once the cluster is known
        super().__init__(init_kwargs={"address": address or "local", "logging_level": logging.WARNING})

    def duplicate(self) -> AuditRayTaskRunner:
        return type(self)(self.ray_address, self.gpus_per_task)

    def __enter__(self) -> AuditRayTaskRunner:
        address = self.init_kwargs["address"]
        if address not in ("local", "auto"):
            _check_answers(address)
        self.init_kwargs["runtime_env"] = {"env_vars": worker_env()}
        try:
            super().__enter__()
        except ConnectionError as exc:  # `auto` with no cluster started on this machine
            raise AuditError(f"no Ray cluster at {address}: {exc}; {_HOW_TO_CONNECT}") from None
        has_gpus = ray.cluster_resources().get("GPU", 0) > 0
        self.gpu_share = self.gpus_per_task if self.gpus_per_task is not None else float(has_gpus)
        return self

    def resources(self, gpu: bool):
        """Ray's resource ask for the tasks submitted inside: a CPU, and a GPU share for GPU-bound ones.

        ``max_calls=0``: a worker process serves task after task. Ray's default for GPU tasks is a fresh process
        each, so that a task's GPU memory is freed with it; that costs every task an import of torch and Prefect
        (seconds), and tasks/gpu.py empties torch's CUDA cache after each task instead."""
        return remote_options(num_cpus=CPUS_PER_TASK, num_gpus=self.gpu_share if gpu else 0, max_calls=0)


_HOW_TO_CONNECT = (
    "start one (`ray start --head`) and pass its address (host:6379, or ray://host:10001 for Ray Client), "
    "or leave out --ray-address to run on a local Ray started for this audit"
)


def _check_answers(address: str) -> None:
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with contextlib.closing(socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_SECONDS)):
            return
    except (OSError, ValueError) as exc:
        raise AuditError(f"no Ray cluster answers at {address} ({exc}); {_HOW_TO_CONNECT}") from None


def worker_env() -> dict[str, str]:
    """The settings a task reads in a Ray worker, as the flow's process has them: where the Prefect API is, where
    task results (and so the cache) live, how much to log and where, no analytics, and where an S3 report store is."""
    settings = get_current_settings()
    env = {
        "PREFECT_HOME": str(settings.home),
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(settings.results.local_storage_path),
        "PREFECT_LOGGING_LEVEL": str(settings.logging.level),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "False",
        "GX_ANALYTICS_ENABLED": "False",
    }
    if settings.api.url:
        env["PREFECT_API_URL"] = settings.api.url
    env |= {key: os.environ[key] for key, _ in RUN_LOG_SETTINGS if key in os.environ}  # what reaches the UI
    # where an s3:// report store (blobs, task results) is; never credentials, which Ray would keep in its metadata:
    # workers take theirs from their own environment (an instance role, their AWS_* variables)
    env |= {key: os.environ[key] for key in S3_LOCATION_ENV if key in os.environ}
    return env
