"""`contract_results`: the outcome of every data-contract expectation of a run."""

import pyarrow as pa

from data_contracts._core import RUN_ID, TableContract, Threshold, column

CONTRACT = TableContract(
    name="contract_results",
    description="One row per expectation checked on a run's tables (the rows `validate_tables` "
    "returns, with the run id).",
    schema=pa.schema(
        [
            RUN_ID,
            column("table_name", pa.string(), "Table the expectation was checked on."),
            column(
                "expectation",
                pa.string(),
                "Great Expectations expectation type, e.g. `expect_column_values_to_be_between`.",
            ),
            column(
                "column",
                pa.string(),
                "Column checked; null for table-level and multi-column expectations.",
                nullable=True,
            ),
            column("success", pa.bool_(), "Whether the expectation held."),
            column(
                "observed_value",
                pa.string(),
                "Short summary of what was seen, e.g. `max=3.1e-07` or `2 unexpected: [...]`.",
                nullable=True,
            ),
            column(
                "details",
                pa.string(),
                "The expectation's arguments as a JSON object with sorted keys.",
            ),
        ]
    ),
    unique_key=("run_id", "table_name", "expectation", "details"),
    allowed_values={},
    ranges={},
)

THRESHOLDS: tuple[Threshold, ...] = ()
