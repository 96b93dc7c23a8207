"""What the Logs tab of a flow run in the Prefect UI shows: our progress lines (``log_progress_to_runs``, called
by flows/__init__.py) beside Prefect's own records and the tasks' Python warnings (tasks/__init__.py), while the
command line's console stays quiet. It loads no Prefect until a line is logged: the command line reads its
settings before Prefect is imported.

The command line (flows/cli/__init__.py) keeps the console at WARNING and lets the run loggers' INFO records reach
the API only, with these settings (a worker's environment takes the same, ``RUN_LOG_SETTINGS``)."""

from __future__ import annotations

from interp_audit import progress

RUN_LOG_SETTINGS = (
    ("PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL", "INFO"),  # to the API (the UI), not to the console:
    ("PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL", "INFO"),
    ("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING"),
    ("PREFECT_LOGGING_EXTRA_LOGGERS", "py.warnings"),  # a task's warnings.warn, in its task run's log
    ("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore"),  # a warning outside any run stays on the console
)


def log_progress_to_runs() -> None:
    """From now on, a progress line printed inside a flow or task run also goes to that run's log."""
    progress.also_log(_to_run_log)


def _to_run_log(line: str) -> None:
    from prefect.context import FlowRunContext, TaskRunContext

    if FlowRunContext.get() is not None or TaskRunContext.get() is not None:
        from prefect import get_run_logger

        get_run_logger().info(line)
