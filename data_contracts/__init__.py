"""Data contracts of the report tables: one Arrow schema and one GX suite per table.

Writers, readers and validation all use these schemas. Deliberately free of Prefect (and of
Great Expectations at import time) so any process can import it cheaply.
"""

import pandas as pd
import pyarrow as pa

from data_contracts._core import ContractSchemaError, TableContract, Threshold, conform_to
from data_contracts.docs import table_docs_markdown
from data_contracts.registry import TABLES, THRESHOLDS
from data_contracts.validation import validate_tables


def conform(name: str, table: pa.Table | pd.DataFrame | list[dict]) -> pa.Table:
    """`table` as a pa.Table with exactly table `name`'s schema (order, types, safe casts).

    Raises ContractSchemaError for missing or extra columns (the partition columns `model` and
    `version` included) and for casts that would lose information.
    """
    return conform_to(TABLES[name], table)


def run_table(name: str, run_id: str, rows: list[dict]) -> pa.Table:
    """One run's rows as table `name`, each with the run's id (the first column of every run table)."""
    return conform(name, [{"run_id": run_id, **row} for row in rows])


__all__ = [
    "TABLES",
    "THRESHOLDS",
    "ContractSchemaError",
    "TableContract",
    "Threshold",
    "conform",
    "run_table",
    "table_docs_markdown",
    "validate_tables",
]
