"""`onnx_parity`: how closely ONNX Runtime reproduces the PyTorch model, per output."""

import pyarrow as pa

from data_contracts._core import RUN_ID, TableContract, Threshold, column

CONTRACT = TableContract(
    name="onnx_parity",
    description="One row per compared output: the differences between PyTorch and ONNX Runtime on the same inputs.",
    schema=pa.schema(
        [
            RUN_ID,
            column("output", pa.string(), "Compared output: `logits` or the layer name."),
            column("shape", pa.list_(pa.int64()), "Shape of the output for one sample."),
            column("max_abs_diff", pa.float64(), "Largest absolute difference over all elements."),
            column(
                "max_rel_diff",
                pa.float64(),
                "Largest absolute difference divided by the output's scale (its largest absolute value in "
                "PyTorch): comparable across layers whose activations run large.",
            ),
            column(
                "argmax_agreement",
                pa.float64(),
                "Share of samples whose argmax over the flattened output agrees between PyTorch and ONNX Runtime.",
            ),
        ]
    ),
    unique_key=("run_id", "output"),
    allowed_values={},
    ranges={
        "max_abs_diff": (0, None),
        "max_rel_diff": (0, None),
        "argmax_agreement": (0, 1),
    },
)

THRESHOLDS = (
    Threshold(
        key="onnx.max_abs_diff",
        table="onnx_parity",
        column="max_abs_diff",
        bound="max",
        doc="Largest absolute PyTorch/ONNX Runtime difference allowed on any output.",
    ),
    Threshold(
        key="onnx.max_rel_diff",
        table="onnx_parity",
        column="max_rel_diff",
        bound="max",
        doc="Largest PyTorch/ONNX Runtime difference allowed on any output, relative to that output's scale: for "
        "deep models, whose activations run too large for an absolute bound to mean much.",
    ),
    Threshold(
        key="onnx.min_argmax_agreement",
        table="onnx_parity",
        column="argmax_agreement",
        bound="min",
        doc="Smallest share of samples whose argmax must agree, on every output.",
    ),
)
