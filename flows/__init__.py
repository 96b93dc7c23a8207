"""Prefect flows: they compose the tasks. A flow's progress lines also reach its run's log (flows/logs.py)."""

from flows.logs import log_progress_to_runs

log_progress_to_runs()
