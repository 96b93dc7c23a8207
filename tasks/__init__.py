"""Prefect tasks: thin adapters from flow values to ``interp_ops``, with policy on the decorator.

Tasks that compute persist their results under a key made of the canonical content of the parameters they read
(``interp_audit.cache_keys``: pydantic models as JSON, arrays, ONNX bytes and the weights by sha256, never a
pickle) and of their own source, so the key is the same in every process and a re-run of a crashed audit
recomputes only what did not finish. Tasks that stay uncached (``UNCACHED``) say why in their docstring.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prefect.cache_policies import NO_CACHE, TASK_SOURCE, CachePolicy

from interp_audit.cache_keys import content_key

# A task's ``warnings.warn`` goes through logging, so that it reaches the task run's log in the Prefect UI (the
# ``py.warnings`` logger is one of Prefect's extra loggers: flows/logs.py) as well as the console.
logging.captureWarnings(True)


@dataclass
class CanonicalInputs(CachePolicy):
    """Cache key from the canonical content of the task's parameters (see ``interp_audit.cache_keys``).

    ``extra``: content the parameters only point at, as ``f(parameters) -> dict``.
    A parameter of a type without a canonical form fails the key (Prefect then logs it and runs uncached).
    """

    extra: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None

    def compute_key(
        self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        return content_key(inputs or {}, self.extra)


def cached(extra: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None) -> dict:
    """Decorator options of a task that computes: persisted, keyed by its inputs' content and its source."""
    return dict(cache_policy=CanonicalInputs(extra=extra) + TASK_SOURCE, persist_result=True)


CACHED = cached()
UNCACHED = dict(cache_policy=NO_CACHE)


def raised(state) -> BaseException | None:
    """The exception a failed task run's ``state`` holds (None when it holds none): what the tasks'
    ``retry_condition_fn`` decide on."""
    try:
        state.result()
    except Exception as exc:
        return exc
    return None
