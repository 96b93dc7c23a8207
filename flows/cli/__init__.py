"""The ``interp-audit`` command line.

Exit codes: 0 passed, 1 failed contracts or gates, 2 invalid input, 3 runtime error. ``validate`` and ``report``
never start Prefect, so they answer in about a second.

A module per group of commands, assembled here in the order ``--help`` lists them: ``audit_commands`` (validate,
run, schedule, watch, schema), ``review_commands`` (demo, review, verdict), ``report_commands`` (the ``report`` sub-app),
``store_commands`` (the ``store`` sub-app), ``fleet_commands`` (the ``fleet`` sub-app); ``options`` holds what they share.
"""

from __future__ import annotations

import os

from flows.logs import RUN_LOG_SETTINGS

# Our progress lines replace Prefect's and MLflow's INFO streams on the console, while a run's INFO records still
# reach its log in the Prefect UI (flows/logs.py); set before anything imports them, and users can still override
# each one.
for _name, _value in (
    ("PREFECT_LOGGING_LEVEL", "WARNING"),
    ("PREFECT_SERVER_LOGGING_LEVEL", "WARNING"),
    ("PREFECT_SERVER_ANALYTICS_ENABLED", "False"),
    ("GX_ANALYTICS_ENABLED", "False"),
    ("MLFLOW_LOGGING_LEVEL", "WARNING"),
    *RUN_LOG_SETTINGS,
):
    os.environ.setdefault(_name, _value)


import typer  # noqa: E402

from flows.cli import audit_commands, review_commands  # noqa: E402
from flows.cli.fleet_commands import fleet_app  # noqa: E402
from flows.cli.report_commands import report_app  # noqa: E402
from flows.cli.store_commands import store_app  # noqa: E402

app = typer.Typer(
    help="Declarative interpretability audits of PyTorch/ONNX models, run by Prefect.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(report_app, name="report")
app.add_typer(store_app, name="store")
app.add_typer(fleet_app, name="fleet")
app.command()(audit_commands.validate)
app.command()(audit_commands.run)
app.command()(audit_commands.schedule)
app.command()(audit_commands.watch)
app.command()(review_commands.demo)
app.command()(review_commands.review)
app.command()(review_commands.verdict)
app.command("schema")(audit_commands.spec_schema)
