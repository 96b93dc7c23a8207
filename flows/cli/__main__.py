"""``python -m flows.cli``: the same command line as the ``interp-audit`` script."""

from flows.cli import app

app()
