"""Prefect tasks: thin adapters from flow values to ``interp_ops``, with policy on the decorator.

Expensive tasks persist their results keyed by their inputs (which include the model's and the data's
sha256) and their own source, so a re-run of a crashed audit recomputes only what did not finish.
"""

from prefect.cache_policies import INPUTS, TASK_SOURCE

CACHED = dict(cache_policy=INPUTS + TASK_SOURCE, persist_result=True)
