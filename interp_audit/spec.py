"""The audit spec: YAML parsed into strict pydantic models.

Every error is reported as ``path: problem (got value)`` so that a user can find and fix it without
reading our code. Checks that need the model itself (layer names, output shape) live in
``interp_audit.intake``; this module only needs the YAML.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from interp_audit.errors import SpecError

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
FACTORY_REF = re.compile(r"^(?P<target>[^:]+):(?P<attr>[A-Za-z_][A-Za-z0-9_.]*)$")


def _safe_name(value: Any) -> str:
    """Names become report-store directory names, so they may not escape it."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError(f"must be a string (got {value!r})")
    if ".." in value or not SAFE_NAME.match(value):
        raise ValueError(
            f"must be a plain name of letters, digits, '.', '_' or '-' without '..' or '/' "
            f"(got {value!r}); such names become directories in the report store"
        )
    return value


SafeName = Annotated[str, BeforeValidator(_safe_name)]


def _check(condition, message: str):
    def check(value):
        if not condition(value):
            raise ValueError(f"{message} (got {value!r})")
        return value

    return AfterValidator(check)


def _not_bool(kind: str):
    """pydantic reads true/false as 1/0 where a number is expected; in a spec that is a typo, never a number."""

    def check(value):
        if isinstance(value, bool):
            raise ValueError(f"must be {kind}, not {str(value).lower()}")
        return value

    return BeforeValidator(check)


# Every integer and float of the spec is one of these; NaN and infinity are refused by StrictModel's config.
Int = Annotated[int, _not_bool("an integer")]
Float = Annotated[float, _not_bool("a number")]
PositiveInt = Annotated[
    Int, _check(lambda v: v > 0, "must be a positive integer"), Field(json_schema_extra={"minimum": 1})
]
NonNegativeInt = Annotated[Int, _check(lambda v: v >= 0, "must be 0 or more"), Field(json_schema_extra={"minimum": 0})]
PositiveFloat = Annotated[
    Float, _check(lambda v: v > 0, "must be > 0"), Field(json_schema_extra={"exclusiveMinimum": 0})
]
Fraction = Annotated[
    Float, _check(lambda v: 0 <= v <= 1, "must be in [0, 1]"), Field(json_schema_extra={"minimum": 0, "maximum": 1})
]
# The seed reaches numpy (any size >= 0), torch.manual_seed (up to 2**64 - 1), sums like seed + run, the int64
# `seed` column of audit_runs, and builtin:concepts' seed (0 to 2**32 - 1, numpy's legacy range): the smallest wins.
MAX_SEED = 2**32 - 1
Seed = Annotated[
    Int,
    _check(lambda v: 0 <= v <= MAX_SEED, f"must be a whole number from 0 to {MAX_SEED}"),
    Field(json_schema_extra={"minimum": 0, "maximum": MAX_SEED}),
]


class StrictModel(BaseModel):
    """Unknown keys are typos, and NaN or infinity in any float (lists included) is never a usable setting."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class InputSpec(StrictModel):
    """What the model takes: samples are converted to this before they reach it."""

    shape: list[PositiveInt] = Field(description="(C, H, W) for images or (features,) for tabular models")
    range: tuple[Float, Float] = Field((0.0, 1.0), description="value range before normalization")
    mean: list[Float] | None = Field(None, description="per-channel mean subtracted after scaling to range")
    std: list[Float] | None = Field(None, description="per-channel std divided by after subtracting mean")
    class_names: list[str] | None = Field(None, description="one name per model output, in order")

    @field_validator("shape")
    @classmethod
    def _shape_rank(cls, shape: list[int]) -> list[int]:
        if len(shape) not in (1, 3):
            raise ValueError(f"must be [C, H, W] for images or [features] for tabular models (got {shape})")
        if len(shape) == 3 and shape[0] not in (1, 3):
            raise ValueError(f"images must have 1 or 3 channels (got {shape[0]} in {shape})")
        return shape

    @field_validator("range")
    @classmethod
    def _range_order(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not value[0] < value[1]:
            raise ValueError(f"must be [low, high] with low < high (got {list(value)})")
        return value

    @field_validator("std")
    @classmethod
    def _std_positive(cls, std: list[float] | None) -> list[float] | None:
        if std is not None and any(s <= 0 for s in std):
            raise ValueError(f"every std must be > 0 (got {std})")
        return std

    @model_validator(mode="after")
    def _per_channel(self) -> InputSpec:
        channels = self.shape[0] if len(self.shape) == 3 else None
        for field in ("mean", "std"):
            values = getattr(self, field)
            if values is None:
                continue
            if channels is None:
                raise ValueError(f"{field}: per-channel normalization needs an image shape [C, H, W]")
            if len(values) != channels:
                raise ValueError(f"{field}: needs one value per channel ({channels}), got {len(values)}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std: give both or neither")
        return self


class _ModelBase(StrictModel):
    name: SafeName
    version: SafeName
    input: InputSpec
    layers: list[str] = Field(default_factory=list, description="internal layers to audit")


class TorchModelSpec(_ModelBase):
    source: Literal["torch"]
    factory: str | None = Field(
        None, description="'package.module:callable' or 'path/to/file.py:callable' (relative to the spec)"
    )
    weights: str = Field(description="state dict (.pt/.pth, loaded with weights_only=True) or .safetensors")
    trust_pickle: bool = Field(False, description="allow a whole pickled module; only for files you trust")

    @field_validator("factory")
    @classmethod
    def _factory_ref(cls, value: str | None) -> str | None:
        if value is not None and not FACTORY_REF.match(value):
            raise ValueError(f"must be 'package.module:callable' or 'path/to/file.py:callable' (got {value!r})")
        return value

    @model_validator(mode="after")
    def _factory_needed(self) -> TorchModelSpec:
        if self.factory is None and not self.trust_pickle:
            raise ValueError("factory: required to build the module that the weights (a state dict) load into")
        return self


class OnnxModelSpec(_ModelBase):
    source: Literal["onnx"]
    path: str = Field(description="path to the .onnx file (relative to the spec)")


MLFLOW_VERSION = re.compile(r"^([1-9][0-9]*|latest|@[A-Za-z0-9_-]+)$")


class MlflowModelSpec(_ModelBase):
    """A version of a model in an MLflow registry: an ONNX-flavor model, a state dict logged with
    ``interp_audit.registry.log_model``, or (trusted only) a pickled torch module."""

    source: Literal["mlflow"]
    version: str = Field(description="a version number, 'latest', or '@alias'; the report records the number")
    tracking_uri: str | None = Field(
        None,
        description="registry location; default MLFLOW_TRACKING_URI, else a SQLite registry inside the report store",
    )
    trust_pickle: bool = Field(
        False, description="allow versions that hold a pickled module; only registries you trust"
    )
    factory: str | None = Field(
        None,
        description="for versions holding a bare state dict: 'package.module:callable' "
        "or 'file.py:callable' (versions logged with log_model record it)",
    )
    backfill: bool = Field(False, description="watch: also audit the versions that existed before the watcher started")
    alias_on_pass: SafeName | None = Field(
        None, description="alias set on the version when its audit passes, e.g. 'audited'"
    )

    _factory_ref = field_validator("factory")(TorchModelSpec._factory_ref.__func__)

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, value: Any) -> str:
        value = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        if not isinstance(value, str) or not MLFLOW_VERSION.match(value):
            raise ValueError(f"must be a version number, 'latest' or '@alias' (got {value!r})")
        return value


ModelSpec = Annotated[TorchModelSpec | OnnxModelSpec | MlflowModelSpec, Field(discriminator="source")]


class SegmentationSpec(StrictModel):
    """Superpixels for image LIME; quickshift's defaults are the ``lime`` package's."""

    method: Literal["quickshift", "slic"] = "quickshift"
    kernel_size: PositiveFloat = 4
    max_dist: PositiveFloat = 200
    ratio: Fraction = 0.2
    n_segments: PositiveInt = Field(50, description="slic only")
    compactness: PositiveFloat = Field(10.0, description="slic only")


class LimeSpec(StrictModel):
    """LIME (Ribeiro et al. 2016): a weighted linear surrogate of the model around each sample."""

    samples: PositiveInt | list[str] = Field(16, description="how many samples to explain (the first N), or their ids")
    labels: Literal["top1"] | list[Int | str] = Field(
        "top1", description="'top1' (the model's decision) or class indices/names to explain for every sample"
    )
    num_samples: PositiveInt = Field(1000, description="perturbations per explanation")
    segmentation: SegmentationSpec = Field(default_factory=SegmentationSpec)
    kernel_width: PositiveFloat | None = Field(None, description="default 0.25 (images) or 0.75*sqrt(features)")
    top_k: PositiveInt = Field(5, description="features reported as the explanation, and used for stability")
    hide: Literal["mean"] | Float = Field(
        "mean", description="fill of hidden superpixels: their mean, or a constant in model-input units"
    )
    batch_size: PositiveInt = Field(256, description="images per ONNX Runtime call")
    stability_seeds: PositiveInt = Field(3, description="seeds whose top-k are compared for stability (1 = off)")
    heldout_samples: NonNegativeInt = Field(200, description="fresh perturbations for the held-out R^2 (0 = off)")
    samples_per_task: PositiveInt = Field(8, description="samples per Prefect task (the fan-out unit)")

    @field_validator("num_samples")
    @classmethod
    def _enough_samples(cls, value: int) -> int:
        if value < 2:
            raise ValueError(f"must be at least 2 perturbations to fit a surrogate (got {value})")
        return value

    def explainer_settings(self) -> dict:
        """What a LIME task reads: how to explain, not which samples or labels nor how the flow batches them."""
        return self.model_dump(exclude={"samples", "labels", "samples_per_task"})


UNITS_FIRST = re.compile(r"^first:(?P<count>[1-9][0-9]*)$")


class ActivationMaxSpec(StrictModel):
    """Activation maximization (Olah et al. 2017): a synthesized image per unit, beside its dataset exemplars."""

    layers: list[str] | None = Field(
        None,
        min_length=1,
        description="layers to visualize, each one of model.layers (default: the last of model.layers)",
    )
    units: str | list[NonNegativeInt] = Field("all", description="'all', 'first:N', or a list of unit indices")
    objective: Literal["channel", "neuron"] = Field(
        "channel", description="channel: the unit's mean over space; neuron: the unit at the centre"
    )
    steps: PositiveInt = Field(256, description="optimisation steps per render")
    param: Literal["fft", "pixel"] = Field("fft", description="image parameterization (fft: 1/f-scaled spectrum)")
    decorrelate: bool = Field(True, description="decorrelated colour (3-channel inputs only)")
    transforms: Literal["standard", "none"] = Field(
        "standard", description="random pad, jitter, scale and rotate at every step (Lucent's standard set)"
    )
    lr: PositiveFloat = Field(0.05, description="Adam learning rate")
    image_size: PositiveInt | None = Field(None, description="render side in pixels (default: the model's input)")
    batch_units: PositiveInt = Field(32, description="units optimised together in one batch (one Prefect task)")
    renders_per_unit: PositiveInt = Field(1, description="renders per unit; more than 1 scores their diversity")
    exemplars: PositiveInt = Field(9, description="dataset images kept per unit, most activating first")
    mixed_precision: bool = Field(False, description="autocast on CUDA (ignored on CPU)")

    @field_validator("units")
    @classmethod
    def _units(cls, units: str | list[int]) -> str | list[int]:
        if isinstance(units, str) and units != "all" and not UNITS_FIRST.match(units):
            raise ValueError(f"must be 'all', 'first:N' with N >= 1, or a list of unit indices (got {units!r})")
        if isinstance(units, list) and not units:
            raise ValueError("must name at least one unit (got [])")
        return units

    def render_settings(self) -> dict:
        """What a render task reads: how to optimise, not which layers and units nor the exemplars."""
        return self.model_dump(exclude={"layers", "units", "exemplars"})


class DissectionSpec(StrictModel):
    """Network dissection (Bau et al. 2017): which units detect which labelled concepts, against a random baseline."""

    layers: list[str] | None = Field(
        None,
        min_length=1,
        description="layers to dissect, each one of model.layers with spatial output (default: all of them)",
    )
    concepts: str = Field(
        "builtin:concepts",
        description="builtin:concepts?n=&size= or a Broden-format folder "
        "(path relative to the spec, or a pyarrow/fsspec URI)",
    )
    quantile: Annotated[Float, _check(lambda v: 0 < v < 0.5, "must lie strictly between 0 and 0.5")] = Field(
        0.005, description="share of each unit's activations counted as active (NetDissect: 0.005)"
    )
    iou_threshold: Annotated[Float, _check(lambda v: 0 < v <= 1, "must be in (0, 1]")] = Field(
        0.04, description="a unit detects its best concept when their IoU reaches this (NetDissect: 0.04)"
    )
    batch_size: PositiveInt = Field(64, description="concept images per ONNX Runtime call")
    baseline: Literal["random_init", "none"] = Field(
        "random_init", description="also dissect the same architecture with seeded random weights"
    )


class OpsSpec(StrictModel):
    """One block per interpretability method; each method issue adds its block here."""

    lime: LimeSpec | None = None
    activation_max: ActivationMaxSpec | None = None
    dissection: DissectionSpec | None = None


class RegionSpec(StrictModel):
    """An image region as fractions of width and height: the four corner squares, or explicit boxes."""

    corners: Annotated[Float, _check(lambda v: 0 < v <= 0.5, "must be in (0, 0.5]")] | None = Field(
        None, description="side of the four corner squares, as a fraction of the image side"
    )
    boxes: list[tuple[Float, Float, Float, Float]] | None = Field(
        None, min_length=1, description="[x0, y0, x1, y1] boxes, fractions of width and height (0,0 = top left)"
    )

    @model_validator(mode="after")
    def _one_form(self) -> RegionSpec:
        if (self.corners is None) == (self.boxes is None):
            raise ValueError(
                "give exactly one of corners (e.g. corners: 0.15) or boxes (e.g. boxes: [[0, 0, 0.2, 0.2]])"
            )
        for index, (x0, y0, x1, y1) in enumerate(self.boxes or []):
            if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
                raise ValueError(
                    f"boxes[{index}]: must be [x0, y0, x1, y1] with 0 <= x0 < x1 <= 1 and "
                    f"0 <= y0 < y1 <= 1 (got {[x0, y0, x1, y1]})"
                )
        return self

    def as_boxes(self) -> list[tuple[float, float, float, float]]:
        if self.boxes is not None:
            return list(self.boxes)
        c = self.corners
        return [(0, 0, c, c), (1 - c, 0, 1, c), (0, 1 - c, c, 1), (1 - c, 1 - c, 1, 1)]


class _GateBase(StrictModel):
    """A verdict on one aggregate metric, evaluated after the contracts; a failed gate fails the run."""

    name: SafeName | None = Field(None, description="name in gate_results (default: the metric)")
    min: Float | None = Field(None, description="lowest passing value")
    max: Float | None = Field(None, description="highest passing value")

    @model_validator(mode="after")
    def _bounds(self):
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self

    @property
    def label(self) -> str:
        return self.name or self.metric


class DetectorsGate(_GateBase):
    metric: Literal["dissection.detectors", "dissection.detectors_above_baseline"] = Field(
        description="units detecting a concept (above_baseline: beating the random-init model on it)"
    )
    layer: str | None = Field(None, description="only this dissected layer (default: all)")
    category: str | None = Field(None, description="only concepts of this category (default: all)")


class LimeRegionGate(_GateBase):
    metric: Literal["lime.region_share"] = Field(
        description="mean share of the positive LIME attribution that falls inside the region (images)"
    )
    region: RegionSpec


class DiffGate(_GateBase):
    metric: Literal["lime.agreement", "dissection.detectors_lost", "activation_max.ratio_change"] = Field(
        description="against the baseline version: mean top-k Jaccard of LIME, detectors lost, mean change "
        "of the render ratio"
    )
    against: Literal["approved", "passed"] = Field(
        "approved", description="baseline: the latest approved version, or also the latest passed one"
    )


class ActmaxGate(_GateBase):
    metric: Literal["activation_max.share_beating_dataset"] = Field(
        description="share of rendered units whose render drives them past every dataset image"
    )


GATES = (DetectorsGate, LimeRegionGate, DiffGate, ActmaxGate)
Gate = Annotated[DetectorsGate | LimeRegionGate | DiffGate | ActmaxGate, Field(discriminator="metric")]


def gate_metrics() -> list[str]:
    return [metric for gate in GATES for metric in gate.model_fields["metric"].annotation.__args__]


class ReviewSpec(StrictModel):
    """Human sign-off inside the flow: a passed audit waits (paused in Prefect) until a reviewer decides."""

    wait_for_sign_off: bool = Field(
        False,
        description="pause the flow run after publishing until `interp-audit "
        "review` or the Prefect UI resumes it with a decision; the "
        "registry alias is set only on approval (needs a Prefect "
        "server: PREFECT_API_URL)",
    )
    timeout_seconds: PositiveInt = Field(
        3600, description="the flow run fails if nobody decides by then (the report stays published, the alias unset)"
    )


class ReportSpec(StrictModel):
    store: str = Field("./reports", description="local path or a pyarrow/fsspec filesystem URI")


class ScheduleSpec(StrictModel):
    cron: str
    timezone: str = "UTC"

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        from prefect._vendor.croniter import croniter  # light import; the same parser Prefect schedules use

        if not croniter.is_valid(value):
            raise ValueError(f"not a valid cron expression (got {value!r}); e.g. '0 3 * * *' is daily at 03:00")
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone (got {value!r}); e.g. 'UTC' or 'Europe/Berlin'") from None
        return value


class AuditSpec(StrictModel):
    name: SafeName
    seed: Seed = Field(0, description="one seed for everything random")
    model: ModelSpec
    data: str = Field(description="builtin:NAME?k=v, a directory of PNG/JPEG images, or a .npy/.npz file")
    ops: OpsSpec = Field(default_factory=OpsSpec)
    contracts: dict[str, Float] = Field(
        default_factory=dict,
        description="threshold key -> value, each within the range its key allows (docs/tables.md)",
    )
    report: ReportSpec = Field(default_factory=ReportSpec)
    schedule: ScheduleSpec | None = None
    review: ReviewSpec = Field(default_factory=ReviewSpec)
    gates: list[Gate] = Field(
        default_factory=list,
        description="verdicts on metrics and on the diff with the baseline version, evaluated after the contracts",
    )

    @field_validator("contracts")
    @classmethod
    def _known_contracts(cls, contracts: dict[str, float]) -> dict[str, float]:
        from data_contracts import THRESHOLDS

        unknown = sorted(set(contracts) - set(THRESHOLDS))
        if unknown:
            raise ValueError(f"unknown contract key {unknown[0]!r}; known keys are: {', '.join(sorted(THRESHOLDS))}")
        return contracts

    @model_validator(mode="after")
    def _contracts_in_range(self) -> AuditSpec:
        """A threshold outside the values its column can hold (a share of 1.5, a distance of -1) is met by every
        run or by none: a typo, never a policy."""
        from data_contracts import THRESHOLDS

        problems = [
            f"contracts.{key}: {refusal}, the values {THRESHOLDS[key].table}.{THRESHOLDS[key].column} can take"
            for key, value in self.contracts.items()
            if (refusal := THRESHOLDS[key].refusal(value))
        ]
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @model_validator(mode="after")
    def _dissection_fits_model(self) -> AuditSpec:
        params = self.ops.dissection
        if params is None:
            return self
        if len(self.model.input.shape) != 3:
            raise ValueError(
                "ops.dissection: needs an image model (model.input.shape [C, H, W]); "
                f"this model takes {self.model.input.shape}"
            )
        if params.baseline == "random_init" and self.model.source == "onnx":
            raise ValueError(
                "ops.dissection.baseline: random_init re-initialises the torch architecture, which an "
                "ONNX file does not give; audit the torch model or set baseline: none"
            )
        if not params.layers and not self.model.layers:
            raise ValueError("ops.dissection.layers: no layer to dissect; list convolutional layers in model.layers")
        for index, layer in enumerate(params.layers or []):
            if layer not in self.model.layers:
                raise ValueError(
                    f"ops.dissection.layers[{index}]: {layer!r} is not one of model.layers "
                    f"{self.model.layers}; add it there (its activations are exported for dissection)"
                )
        return self

    @model_validator(mode="after")
    def _activation_max_fits_model(self) -> AuditSpec:
        params = self.ops.activation_max
        if params is None:
            return self
        if self.model.source == "onnx":
            raise ValueError(
                "ops.activation_max: activation maximization follows gradients, which an ONNX file "
                "does not give; audit the torch model (model.source: torch) or remove "
                "ops.activation_max"
            )
        if not params.layers and not self.model.layers:
            raise ValueError("ops.activation_max.layers: no layer to visualize; list one in model.layers")
        if len(self.model.input.shape) != 3:
            raise ValueError(
                "ops.activation_max: needs an image model (model.input.shape [C, H, W]); "
                f"this model takes {self.model.input.shape}"
            )
        for index, layer in enumerate(params.layers or []):
            if layer not in self.model.layers:
                raise ValueError(
                    f"ops.activation_max.layers[{index}]: {layer!r} is not one of model.layers "
                    f"{self.model.layers}; add it there (its activations give the exemplars)"
                )
        return self

    @model_validator(mode="after")
    def _gates_fit_ops(self) -> AuditSpec:
        seen = set()
        for index, gate in enumerate(self.gates):
            method = gate.metric.split(".")[0]
            if getattr(self.ops, method) is None:
                raise ValueError(
                    f"gates[{index}]: {gate.metric} measures {method}, which the spec does not run; "
                    f"add ops.{method} or remove the gate"
                )
            if isinstance(gate, LimeRegionGate) and len(self.model.input.shape) != 3:
                raise ValueError(f"gates[{index}]: lime.region_share needs an image model")
            if (
                isinstance(gate, DetectorsGate)
                and gate.layer is not None
                and gate.layer not in (self.ops.dissection.layers or self.model.layers)
            ):
                raise ValueError(
                    f"gates[{index}].layer: {gate.layer!r} is not a dissected layer "
                    f"{self.ops.dissection.layers or self.model.layers}"
                )
            if gate.label in seen:
                raise ValueError(f"gates[{index}]: a second gate named {gate.label!r}; give each gate its own name")
            seen.add(gate.label)
        return self

    def selected_methods(self, only: list[str] | None = None) -> list[str]:
        """The spec's method blocks, narrowed by ``--only``; a name the spec does not declare is bad input."""
        declared = [name for name in OpsSpec.model_fields if getattr(self.ops, name) is not None]
        unknown = sorted(set(only or []) - set(declared))
        if unknown:
            raise SpecError(
                f"--only: {', '.join(unknown)} not declared under ops in the spec; "
                f"declared methods: {', '.join(declared) or 'none'}"
            )
        return [name for name in declared if only is None or name in only]


class LoadedSpec(BaseModel):
    """A validated spec with what is needed to reproduce it: its text, hash and folder."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    spec: AuditSpec
    text: str
    sha256: str
    base_dir: Path


def _format_loc(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif (
            part in ("torch", "onnx", "mlflow")
            and path == "model"
            or isinstance(part, str)
            and path.endswith("]")
            and path.startswith("gates[")
            and "." in part
            and "[" not in part
        ):
            continue  # discriminator tag, not a key the user wrote
        elif isinstance(part, str) and (part.startswith("function-") or "[" in part or part in UNION_BRANCHES):
            continue  # which branch of a union pydantic tried: not a key the user wrote
        else:
            path += ("." if path else "") + str(part)
    return path or TOP_LEVEL


TOP_LEVEL = "(top level)"


UNION_BRANCHES = {"int", "float", "str", "bool", "list", "dict", "none"}
_FRIENDLY = {
    "int_from_float": "must be an integer",
    "int_parsing": "must be an integer",
    "int_type": "must be an integer",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "finite_number": "must be a finite number, not NaN or infinity",
    "string_type": "must be a string",
    "bool_parsing": "must be true or false",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "missing": "is required",
    "extra_forbidden": "unknown key; remove it or check its spelling",
    "union_tag_invalid": "must be one of: torch, onnx, mlflow",
    "union_tag_not_found": "is required (one of: torch, onnx, mlflow)",
    "literal_error": "must be one of the allowed values",
}


def format_validation_error(error: ValidationError) -> list[str]:
    """One line per offending path; the alternatives of a union are joined into one line."""
    by_path: dict[str, list[str]] = {}
    got_by_path: dict[str, Any] = {}
    for item in error.errors():
        loc = list(item["loc"])
        kind = item["type"]
        got = item.get("input")
        if kind in ("union_tag_invalid", "union_tag_not_found"):
            ctx = item.get("ctx") or {}
            loc.append(str(ctx.get("discriminator", "source")).strip("'"))
            got = ctx.get("tag")
        where = _format_loc(tuple(loc))
        if kind == "value_error":
            text = str(item["msg"]).removeprefix("Value error, ")
            got = None  # our own messages already say what they got
        elif kind == "literal_error":
            text = f"must be {item['ctx']['expected']}"
        elif kind in ("union_tag_invalid", "union_tag_not_found") and loc[-1] == "metric":
            text = (
                "must be" if kind == "union_tag_invalid" else "is required:"
            ) + f" one of {', '.join(gate_metrics())}"
        else:
            text = _FRIENDLY.get(kind, item["msg"])
        if kind == "extra_forbidden" and where.startswith("ops.") and where.count(".") == 1:
            text = "unknown method; the methods this version supports are: " + ", ".join(OpsSpec.model_fields)
        if kind in ("missing", "extra_forbidden", "union_tag_not_found"):
            got = None
        by_path.setdefault(where, [])
        if text not in by_path[where]:
            by_path[where].append(text)
        if got is not None:
            got_by_path.setdefault(where, got)
    # a whole-spec check names its own path in its message, so it gets no "(top level): " prefix
    return [
        ("" if where == TOP_LEVEL and where not in got_by_path else f"{where}: ")
        + " or ".join(texts)
        + (f" (got {got_by_path[where]!r})" if where in got_by_path else "")
        for where, texts in by_path.items()
    ]


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A key given twice in one mapping."""


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error: PyYAML silently keeps the
    last one, so a spec with two `seed:` lines would audit with a seed its reader may never notice."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *defaults` merges keys that the mapping may override: not a repetition
                key = self.construct_object(key_node, deep=True)
                try:
                    line = first_line.setdefault(key, key_node.start_mark.line)
                except TypeError:
                    continue  # an unhashable key: SafeLoader reports it
                if line != key_node.start_mark.line:
                    raise DuplicateKeyError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"key {key!r} is given twice (first at line {line + 1})",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep)


def parse_spec(text: str, base_dir: Path, source: str = "<spec>") -> LoadedSpec:
    try:
        raw = yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader: builds plain data, never objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        fix = "keep one of them" if isinstance(exc, DuplicateKeyError) else "fix the syntax and retry"
        raise SpecError([f"{source}: invalid YAML{where}: {problem}; {fix}"]) from None
    if not isinstance(raw, dict):
        raise SpecError(
            [f"{source}: the spec must be a YAML mapping with keys name, model, data, ... (got {type(raw).__name__})"]
        )
    try:
        spec = AuditSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc)) from None
    return LoadedSpec(spec=spec, text=text, sha256=hashlib.sha256(text.encode()).hexdigest(), base_dir=base_dir)


def load_spec(path: str | Path) -> LoadedSpec:
    path = Path(path)
    if not path.is_file():
        raise SpecError([f"{path}: spec file not found; give the path to an audit spec YAML file"])
    return parse_spec(path.read_text(), path.resolve().parent, source=str(path))


def with_model_version(loaded: LoadedSpec, version: str) -> LoadedSpec:
    """The same spec pinned to another version of its registered model; its text and hash stay the spec's, so
    every version audited from one spec shares the spec's identity."""
    model = loaded.spec.model
    if not isinstance(model, MlflowModelSpec):
        raise SpecError(
            f"version {version!r} given for a {model.source} model; only registry models "
            "(model.source: mlflow) have versions to choose from"
        )
    try:
        pinned = MlflowModelSpec.model_validate({**model.model_dump(), "version": version})
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc)) from None
    return loaded.model_copy(update={"spec": loaded.spec.model_copy(update={"model": pinned})})


def json_schema() -> dict[str, Any]:
    return AuditSpec.model_json_schema()
