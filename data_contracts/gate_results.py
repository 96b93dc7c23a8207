"""`gate_results`: the spec's gates, evaluated after the contracts; one failed gate fails the run."""

import pyarrow as pa

from data_contracts._core import RUN_ID, TableContract, Threshold, column

CONTRACT = TableContract(
    name="gate_results",
    description="One row per gate of the spec: the metric it measured, its limits and the verdict.",
    schema=pa.schema(
        [
            RUN_ID,
            column("gate", pa.string(), "Name of the gate (from the spec, default: its metric)."),
            column("metric", pa.string(), "The gated metric, e.g. dissection.detectors or lime.region_share."),
            column("params", pa.string(), "JSON of the gate as declared in the spec."),
            column("value", pa.float64(), "The measured value; null when the gate was skipped.", nullable=True),
            column("min", pa.float64(), "Lowest passing value, if any.", nullable=True),
            column("max", pa.float64(), "Highest passing value, if any.", nullable=True),
            column("outcome", pa.string(), "passed, failed, or skipped (nothing to measure, e.g. no baseline)."),
            column("detail", pa.string(), "What was measured on what, or why the gate was skipped."),
        ]
    ),
    unique_key=("run_id", "gate"),
    allowed_values={"outcome": ("passed", "failed", "skipped")},
    ranges={},
)

THRESHOLDS: tuple[Threshold, ...] = ()
