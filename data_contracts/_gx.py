"""Great Expectations, imported quietly.

Imported lazily by the validation code only: importing GX takes seconds, and writers that
just need a schema should not pay for it.
"""

import logging
import os

# Both before the import. GX releases that ship usage analytics read the variable when they
# start (the installed 1.24.1 has no analytics code; the setting guards other installs). GX
# also logs at INFO/DEBUG while importing; orchestrators often lower the root logger to INFO,
# and that chatter is noise in audit logs.
os.environ["GX_ANALYTICS_ENABLED"] = "False"
logging.getLogger("great_expectations").setLevel(logging.WARNING)

import great_expectations as gx  # noqa: E402
from great_expectations.data_context.types.base import ProgressBarsConfig  # noqa: E402

# This module pins its own logger to INFO and logs a line for every ephemeral context.
logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)


def ephemeral_context():
    """A throwaway in-memory context with tqdm progress bars off (they would flood run logs)."""
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


__all__ = ["ephemeral_context", "gx"]
