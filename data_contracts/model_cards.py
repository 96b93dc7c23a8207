"""`model_cards`: the model card of an approved run, stored when the approval is recorded, each in its own file."""

import pyarrow as pa

from data_contracts._core import RUN_ID, TableContract, Threshold, column

CONTRACT = TableContract(
    name="model_cards",
    description=(
        "One row per approval of a run: the run's model card (Hugging Face conventions: YAML metadata and Markdown "
        "sections) as it stood when the approval was recorded; rows are only ever added, each in its own file."
    ),
    schema=pa.schema(
        [
            RUN_ID,
            column("card_id", pa.string(), "Id of the card (one per approving review)."),
            column("review_id", pa.string(), "The approving review (reviews.review_id) the card was written for."),
            column("created_at", pa.timestamp("us", tz="UTC"), "When the card was stored."),
            column(
                "card_sha256",
                pa.string(),
                "Hex SHA-256 of card_markdown (UTF-8): a card that differs from it was changed after it was stored.",
            ),
            column(
                "tables_sha256",
                pa.string(),
                "SHA-256 over the run's published table files the card was written from; equal to the approving "
                "review's.",
            ),
            column("card_markdown", pa.string(), "The card: YAML metadata block, then Markdown sections."),
        ]
    ),
    unique_key=("run_id", "card_id"),
    allowed_values={},
    ranges={},
)

THRESHOLDS: tuple[Threshold, ...] = ()
