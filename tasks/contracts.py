"""Data-contract task: every output table is validated by its Great Expectations suite."""

from __future__ import annotations

import pyarrow as pa
from prefect import task

import data_contracts
from tasks import UNCACHED


@task(name="validate-contracts", **UNCACHED)
def validate_contracts(tables: dict[str, pa.Table], thresholds: dict[str, float]) -> list[dict]:
    """Uncached: every table carries this run's ``run_id``, so no key could match another run's."""
    return data_contracts.validate_tables(tables, thresholds)
