"""Data-contract task: every output table is validated by its Great Expectations suite."""

from __future__ import annotations

import pyarrow as pa
from prefect import task

import data_contracts


@task(name="validate-contracts")
def validate_contracts(tables: dict[str, pa.Table], thresholds: dict[str, float]) -> list[dict]:
    return data_contracts.validate_tables(tables, thresholds)
