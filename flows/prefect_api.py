"""The Prefect API a command talks to: the user's server (``PREFECT_API_URL``), or a local one it starts itself.

Prefect would start its own ephemeral server on first use, but with a start-up timeout (20 s) that the first
start on a new machine (creating and migrating its database) outlasts on two cores, and as a child that keeps
running when the command is killed. This one waits as long as the first start needs, says so while it waits,
and dies with the command: the kernel sends it SIGTERM when its parent dies (Linux's parent-death signal), and a
normal exit stops it explicitly.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import httpx

from interp_audit import progress
from interp_audit.errors import AuditError

STARTUP_TIMEOUT_SECONDS = 300
OUR_LIMITS = ("interp-audit-", "gpu")  # global concurrency limits this tool creates (flows/registry.py, tasks/gpu.py)

# A full server, not Prefect's ephemeral one: its scheduler fires `interp-audit schedule`'s cron, and its
# repossessor frees the concurrency slots of a run that died holding them. Leases are kept on disk (under
# PREFECT_HOME) rather than in the server's memory, so a slot held when a command was killed is still freed by the
# next command's server once its lease expires; in memory it would stay taken for good.
LOCAL_SERVER = {
    "PREFECT_UI_ENABLED": "0",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "0",
    "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect.server.concurrency.lease_storage.filesystem",
    "PREFECT__SERVER_FINAL": "1",
}
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask the kernel to send SIGTERM to this process when its parent dies (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    os.setpgid(0, 0)  # its own process group: a Ctrl-C in the terminal reaches the command, which stops it


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def prefect_api() -> Iterator[str]:
    """Yield the API URL to use; a local server started here is stopped on the way out, whatever happens."""
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    if PREFECT_API_URL.value():
        yield PREFECT_API_URL.value()
        return
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    log = tempfile.TemporaryFile()
    server = subprocess.Popen(
        server_command(port),
        env={**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True), **LOCAL_SERVER},
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        preexec_fn=die_with_parent,
    )
    try:
        progress.step(
            f"starting a local Prefect API at {url} (pid {server.pid}); the first start on a machine "
            "creates its database and can take a minute. Set PREFECT_API_URL to use a running server"
        )
        wait_until_healthy(server, url, log)
        with temporary_settings({PREFECT_API_URL: url}):
            _free_unleased_slots()
            try:
                yield url
            finally:
                _send_queued()
    finally:
        _stop(server)
        log.close()


def server_command(port: int) -> list[str]:
    """A full Prefect server (API, UI where enabled, and its services) on 127.0.0.1:``port``."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "prefect.server.api.server:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "error",
        "--lifespan",
        "on",
    ]


def wait_until_healthy(server: subprocess.Popen, url: str, log) -> None:
    """Wait until the server at ``url`` answers, failing with its log's tail if it exits first or takes too long."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise AuditError(
                    f"the local Prefect API exited with code {server.returncode} while starting: "
                    f"{tail(log)}; check PREFECT_HOME, or set PREFECT_API_URL to a running server"
                )
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{url}/health").status_code == 200:
                    return
            time.sleep(0.25)
    raise AuditError(
        f"the local Prefect API did not answer within {STARTUP_TIMEOUT_SECONDS} s: {tail(log)}; "
        "start one with `prefect server start` and set PREFECT_API_URL"
    )


def _free_unleased_slots() -> None:
    """Our concurrency slots that are taken with no lease on disk were taken before leases were kept there (by an
    earlier version of this tool, whose local server held them in memory): nobody holds them and nothing would
    ever give them back. A slot of a live command always has its lease file."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
    from prefect.server.concurrency.lease_storage.filesystem import ConcurrencyLeaseStorage

    async def leased_limit_ids() -> set:
        storage = ConcurrencyLeaseStorage()
        lease_ids = await storage.read_active_lease_ids(limit=1_000_000) + await storage.read_expired_lease_ids(
            limit=1_000_000
        )
        leases = [await storage.read_lease(lease_id) for lease_id in lease_ids]
        return {limit_id for lease in leases if lease is not None for limit_id in lease.resource_ids}

    leased = asyncio.run(leased_limit_ids())
    with get_client(sync_client=True) as client:
        limits, page = [], None
        while page is None or len(page) == 200:  # the API's largest page
            page = client.read_global_concurrency_limits(limit=200, offset=len(limits))
            limits += page
        for limit in limits:
            if limit.active_slots and limit.id not in leased and limit.name.startswith(OUR_LIMITS):
                client.update_global_concurrency_limit(limit.name, GlobalConcurrencyLimitUpdate(active_slots=0))
                progress.step(
                    f"freed {limit.active_slots} slot(s) of {limit.name}: taken with no lease, held by nobody"
                )


def _send_queued() -> None:
    """Logs and events Prefect still queues for the server go out before it stops (else its log worker complains
    on the console that it cannot reach the API)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):  # a worker never started, or one stuck: stopping must go on
            worker.drain_all(timeout=10)


def tail(log, limit: int = 2000) -> str:
    log.seek(0)
    text = " ".join(log.read().decode(errors="replace").split())
    return text[-limit:] or "no output"


def _stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
