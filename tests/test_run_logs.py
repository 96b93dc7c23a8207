"""What the Logs tab of an audit's flow run in the Prefect UI shows (read here from the Prefect API, where the UI
reads it): the progress lines the command prints and a task's warnings, while the console gets no Prefect INFO."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import save_state_dict
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.settings import PREFECT_API_URL

from interp_audit import report

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]
ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "tests" / "assets"


def flow_run_logs(flow_run_id: str, expected: int, seconds: float = 30) -> list:
    """The run's log records, once at least ``expected`` have arrived (the command sends them in batches)."""
    deadline = time.monotonic() + seconds
    while True:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        if len(logs) >= expected or time.monotonic() > deadline:
            return logs
        time.sleep(0.5)


def test_an_audits_progress_and_its_tasks_warnings_reach_its_run_log_not_the_console(gray_spec, tmp_path):
    from user_models import scaled_gray_net

    weights = save_state_dict(scaled_gray_net(), tmp_path / "scaled.pt")
    spec = gray_spec(
        **{
            "model.factory": f"{ASSETS / 'user_models.py'}:scaled_gray_net",
            "model.weights": str(weights),
            "model.layers": ["body.conv1"],
            "ops": {"dissection": {"concepts": "builtin:concepts?n=12", "baseline": "random_init"}},
        }
    )
    env = os.environ | {"PREFECT_API_URL": PREFECT_API_URL.value()}
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", str(spec)], env=env, capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (run_id,) = report.list_runs(tmp_path / "reports").run_id

    logs = flow_run_logs(run_id, expected=5)
    flow_lines = [log.message for log in logs if log.task_run_id is None and log.level == 20]
    for line in ("audit gray-audit of gray-net v7 on cpu", "ONNX bundle ready", "dissection:", "contracts:"):
        assert any(message.startswith(line) for message in flow_lines), (line, flow_lines)
    assert not any("[/" in message or "[dim]" in message for message in flow_lines)  # plain text, no markup
    warned = [log for log in logs if log.level == 30 and "have no reset_parameters()" in log.message]
    assert warned and all(log.task_run_id is not None for log in warned), [log.message for log in logs]

    console = done.stdout + done.stderr
    assert "ONNX bundle ready" in console and "have no reset_parameters()" in console
    assert "| INFO" not in console and "Finished in state" not in console, console[-3000:]
