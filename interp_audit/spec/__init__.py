"""The audit spec: YAML parsed into strict pydantic models.

Every error is reported as ``path: problem (got value)`` so that a user can find and fix it without
reading our code. Checks that need the model itself (layer names, output shape) live in
``interp_audit.intake``; this package only needs the YAML.

Modules: ``fields`` (the value types every block uses), ``model`` (the model block), ``ops`` (one block per
method), ``gates`` (the gates block), ``audit`` (the whole spec and its checks across blocks), ``messages``
(validation errors as users read them) and ``loading`` (YAML, hashing, pinning a registry version).
"""

from interp_audit.spec.audit import AuditSpec, ReportSpec, ReviewSpec, ScheduleSpec
from interp_audit.spec.fields import FACTORY_REF, MAX_SEED, SAFE_NAME
from interp_audit.spec.gates import (
    GATES,
    AblationGate,
    ActmaxGate,
    DetectorsGate,
    DiffGate,
    Gate,
    LimeRegionGate,
    LimeSanityGate,
    ProbeGate,
    RegionSpec,
    TcavGate,
    gate_metrics,
)
from interp_audit.spec.loading import (
    DuplicateKeyError,
    LoadedSpec,
    UniqueKeyLoader,
    json_schema,
    load_spec,
    parse_spec,
    with_model_version,
)
from interp_audit.spec.messages import TOP_LEVEL, UNION_BRANCHES, format_validation_error
from interp_audit.spec.model import (
    MLFLOW_VERSION,
    InputSpec,
    MlflowModelSpec,
    ModelSpec,
    OnnxModelSpec,
    SklearnModelSpec,
    TokenLayerSpec,
    TorchModelSpec,
)
from interp_audit.spec.ops import (
    UNITS_FIRST,
    AblationSpec,
    ActivationMaxSpec,
    DissectionSpec,
    LimeSpec,
    OpsSpec,
    ProbesSpec,
    SegmentationSpec,
    TcavSpec,
)

__all__ = [
    "AblationGate",
    "AblationSpec",
    "ProbesSpec",
    "TcavSpec",
    "ActivationMaxSpec",
    "ActmaxGate",
    "AuditSpec",
    "DetectorsGate",
    "DiffGate",
    "DissectionSpec",
    "DuplicateKeyError",
    "FACTORY_REF",
    "GATES",
    "Gate",
    "InputSpec",
    "LimeRegionGate",
    "LimeSanityGate",
    "ProbeGate",
    "TcavGate",
    "LimeSpec",
    "LoadedSpec",
    "MAX_SEED",
    "MLFLOW_VERSION",
    "MlflowModelSpec",
    "ModelSpec",
    "OnnxModelSpec",
    "SklearnModelSpec",
    "TokenLayerSpec",
    "OpsSpec",
    "RegionSpec",
    "ReportSpec",
    "ReviewSpec",
    "SAFE_NAME",
    "ScheduleSpec",
    "SegmentationSpec",
    "TOP_LEVEL",
    "TorchModelSpec",
    "UNION_BRANCHES",
    "UNITS_FIRST",
    "UniqueKeyLoader",
    "format_validation_error",
    "gate_metrics",
    "json_schema",
    "load_spec",
    "parse_spec",
    "with_model_version",
]
