"""`reviews`: append-only sign-offs of audit runs, each bound to the hash of the run's published tables."""

import pyarrow as pa

from data_contracts._core import RUN_ID, TableContract, Threshold, column

CONTRACT = TableContract(
    name="reviews",
    description="One row per review of a run; rows are only ever added, each in its own file.",
    schema=pa.schema(
        [
            RUN_ID,
            column("review_id", pa.string(), "Id of the review."),
            column("reviewer", pa.string(), "Who reviewed."),
            column("decision", pa.string(), "approved or rejected."),
            column("comment", pa.string(), "The reviewer's comment.", nullable=True),
            column("reviewed_at", pa.timestamp("us", tz="UTC"), "When the review was recorded."),
            column(
                "tables_sha256",
                pa.string(),
                "SHA-256 over the run's published table files at review time: a later change to any of them "
                "no longer matches.",
            ),
        ]
    ),
    unique_key=("run_id", "review_id"),
    allowed_values={"decision": ("approved", "rejected")},
    ranges={},
)

THRESHOLDS: tuple[Threshold, ...] = ()
