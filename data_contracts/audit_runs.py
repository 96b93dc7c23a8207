"""`audit_runs`: one row per audit run, everything needed to reproduce and trust it."""

import pyarrow as pa

from data_contracts._core import RUN_ID, TableContract, Threshold, column

_SHA256 = "Hex SHA-256"
_UTC = pa.timestamp("us", tz="UTC")

CONTRACT = TableContract(
    name="audit_runs",
    description="One row per audit run: what was audited, with which spec, data and software, and the outcome.",
    schema=pa.schema(
        [
            RUN_ID,
            column("audit_name", pa.string(), "Name of the audit, from the spec."),
            column("model_name", pa.string(), "Name of the audited model."),
            column("model_version", pa.string(), "Version of the audited model."),
            column("model_source", pa.string(), "Where the model was loaded from."),
            column(
                "weights_sha256",
                pa.string(),
                f"{_SHA256} of the PyTorch weights or of the scikit-learn model's .skops file; null for ONNX "
                "models, which have none.",
                nullable=True,
            ),
            column("onnx_sha256", pa.string(), f"{_SHA256} of the ONNX file that was audited."),
            column("spec_sha256", pa.string(), f"{_SHA256} of `spec_text`."),
            column("spec_text", pa.string(), "The audit spec exactly as run, for reproduction."),
            column("seed", pa.int64(), "Seed for every random choice of the run."),
            column("data_uri", pa.string(), "URI of the input data set."),
            column("num_samples", pa.int64(), "Number of input samples audited."),
            column("started_at", _UTC, "When the run started (UTC)."),
            column("finished_at", _UTC, "When the run finished (UTC)."),
            column(
                "status",
                pa.string(),
                "`passed`; `failed_contracts` if a contract expectation failed; else `failed_gates` if a gate "
                "of the spec failed.",
            ),
            column("device", pa.string(), "Device the model ran on, e.g. `cpu` or `cuda:0`."),
            column(
                "ort_providers",
                pa.list_(pa.string()),
                "ONNX Runtime execution providers in priority order.",
            ),
            column(
                "package_versions",
                pa.string(),
                "JSON object mapping package name to installed version.",
            ),
        ]
    ),
    unique_key=("run_id",),
    allowed_values={
        "model_source": ("torch", "onnx", "sklearn", "mlflow"),
        "status": ("passed", "failed_contracts", "failed_gates"),
    },
    ranges={"num_samples": (0, None)},
)

THRESHOLDS: tuple[Threshold, ...] = ()
