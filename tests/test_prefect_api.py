"""A newcomer's first command: `interp-audit run` on a machine with an empty home folder and no Prefect set-up
starts its own local Prefect API, waits as long as the first start (database creation) needs, and never leaves
that server running, even when the command is killed with SIGKILL."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ASSETS = Path(__file__).parent / "assets"
CLI = Path(sys.executable).parent / "interp-audit"
STARTED = re.compile(r"starting a local Prefect API at http://127\.0\.0\.1:\d+/api \(pid (\d+)\)")

pytestmark = pytest.mark.slow


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead: it only waits for its (new) parent to reap it
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


def wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.2)
    return False


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory):
    """An empty home folder, no PREFECT_* settings, and a small spec of a user's model."""
    from user_models import gray_net

    root = tmp_path_factory.mktemp("newcomer")
    (root / "home").mkdir()
    torch.save(gray_net().state_dict(), root / "gray.pt")
    (root / "spec.yaml").write_text(f"""
name: first-run
model:
  source: torch
  name: gray-net
  version: "1"
  factory: {ASSETS / "user_models.py"}:gray_net
  weights: gray.pt
  input: {{shape: [1, 28, 28], range: [0, 1], mean: [0.5], std: [0.5]}}
  layers: [body.conv1]
data: "builtin:shapes?split=val&n=4"
report: {{store: {root / "reports"}}}
""")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(HOME=str(root / "home"), PYTHONPATH=str(ASSETS))
    return root, env


def test_the_first_run_on_a_new_machine_works_and_stops_its_server(newcomer):
    root, env = newcomer
    result = subprocess.run(
        [str(CLI), "run", str(root / "spec.yaml")], env=env, cwd=root, capture_output=True, text=True, timeout=600
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "status: passed" in output, output
    assert "Traceback" not in output and "Error logging to API" not in output, output  # queued logs went out first
    # the run's INFO records went to its log in the API (tests/test_fleet.py reads them there), not to the console
    assert "| INFO" not in output and "Finished in state" not in output, output
    started = STARTED.search(output)
    assert started, output
    assert (root / "home" / ".prefect" / "prefect.db").is_file()  # it really was a first start: a new database
    assert wait_gone(int(started.group(1)), 5), "the local Prefect API outlived the command"


def api_server_child(parent: int) -> int | None:
    """The pid of a uvicorn process (a Prefect API server) whose parent is ``parent``, found through /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if f"PPid:\t{parent}\n" in status and "uvicorn" in cmdline:
            return int(entry.name)
    return None


def test_a_killed_run_takes_its_server_with_it(newcomer):
    root, env = newcomer
    command = subprocess.Popen(
        [str(CLI), "run", str(root / "spec.yaml")],
        env=env,
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while (server := api_server_child(command.pid)) is None:
            assert command.poll() is None and time.monotonic() < deadline, "no Prefect API server was started"
            time.sleep(0.2)
        command.send_signal(signal.SIGKILL)  # no cleanup code of ours runs
        command.wait(timeout=10)
        assert wait_gone(server, 20), "the local Prefect API outlived a killed command"
    finally:
        if command.poll() is None:
            command.kill()


HOLD_THE_SLOT = """
import time
from flows.prefect_api import prefect_api
from flows.registry import key_lock
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
from tasks.limits import ensure_limit
with prefect_api(), key_lock("a-killed-audit"):
    ensure_limit("interp-audit-taken-without-lease", 1)  # as a version before leases on disk left it
    with get_client(sync_client=True) as client:
        client.update_global_concurrency_limit(
            "interp-audit-taken-without-lease", GlobalConcurrencyLimitUpdate(active_slots=1)
        )
    print("holding", flush=True)
    time.sleep(600)
"""
TAKE_THE_SLOT = """
from flows.prefect_api import prefect_api
from flows.registry import key_lock
with prefect_api():
    with key_lock("taken-without-lease"):
        print("acquired the one taken without lease", flush=True)
    with key_lock("a-killed-audit"):
        print("acquired", flush=True)
"""


def leases(home: Path) -> list[str]:
    folder = home / ".prefect" / "concurrency_leases"
    return sorted(path.stem for path in folder.glob("*.json") if path.name != "expirations.json")


def test_a_version_slot_held_by_a_killed_audit_is_freed_by_the_next_server(newcomer):
    """The demo's second run used to wait for good: an audit killed while it held its version's one-slot limit
        left the slot taken, and the next command's local server never gave it back. A slot taken with no lease at all
    (left by a version that kept leases in memory) is freed when the local server starts. Leases now live on disk and the
        local server's repossessor frees an expired one (after the lease's 60 s, Prefect's shortest). The repossessor
        looks every second here instead of 15, and a waiting client asks again every 2 s instead of up to 30."""
    root, env = newcomer
    env = {
        **env,
        "PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": "1",
        "PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS": "2",
    }
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_SLOT], env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        lines = iter(holder.stdout.readline, b"")  # progress lines first (the server starting), then ours
        assert any(line == b"holding\n" for line in lines), "the holder stopped before it held the slot"
        holder.send_signal(signal.SIGKILL)  # the audit and, with it, its server die without releasing anything
        holder.wait(timeout=10)
    finally:
        if holder.poll() is None:
            holder.kill()
    assert len(leases(root / "home")) == 1  # the killed holder's lease is still there: its slot is still taken
    result = subprocess.run(
        [sys.executable, "-c", TAKE_THE_SLOT], env=env, cwd=root, capture_output=True, text=True, timeout=180
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "acquired the one taken without lease\nacquired\n" in result.stdout, output
    assert "freed 1 slot(s) of interp-audit-taken-without-lease" in output, output
    assert leases(root / "home") == []  # the expired lease was revoked, the new one released
