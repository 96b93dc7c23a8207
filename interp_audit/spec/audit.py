"""The whole audit spec: its blocks, and the checks that need more than one block (a gate on a method the spec
runs, a layer the model declares)."""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from interp_audit.errors import SpecError
from interp_audit.spec.fields import Float, PositiveInt, SafeName, Seed, StrictModel
from interp_audit.spec.gates import AblationGate, DetectorsGate, Gate, LimeRegionGate, ProbeGate, TcavGate
from interp_audit.spec.model import ModelSpec
from interp_audit.spec.ops import OpsSpec


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


class CardSpec(StrictModel):
    """What a run's model card says that no table knows: who answers for the model, what it is (not) for."""

    owners: list[str] = Field(default_factory=list, description="people or teams who answer for the model")
    intended_use: str | None = Field(None, description="what the model is for, and by whom")
    out_of_scope_uses: list[str] = Field(
        default_factory=list, description="uses the model is not meant or fit for (each one a sentence)"
    )
    known_limitations: list[str] = Field(
        default_factory=list, description="known weaknesses, biases or failure cases (each one a sentence)"
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
    card: CardSpec | None = Field(
        None, description="owners, intended use and limitations for the model card (`interp-audit report card`)"
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

    def _require_image_model(self, method: str) -> None:
        if len(self.model.input.shape) != 3:
            raise ValueError(
                f"ops.{method}: needs an image model (model.input.shape [C, H, W]); "
                f"this model takes {self.model.input.shape}"
            )

    def _require_model_layers(self, method: str, layers: list[str] | None, why: str) -> None:
        """A method's layers must be among model.layers: only those are exported as outputs of the ONNX bundle."""
        for index, layer in enumerate(layers or []):
            if layer not in self.model.layer_names:
                raise ValueError(
                    f"ops.{method}.layers[{index}]: {layer!r} is not one of model.layers "
                    f"{self.model.layer_names}; add it there ({why})"
                )

    @model_validator(mode="after")
    def _dissection_fits_model(self) -> AuditSpec:
        params = self.ops.dissection
        if params is None:
            return self
        self._require_image_model("dissection")
        if params.baseline == "random_init" and self.model.source in ("onnx", "sklearn"):
            raise ValueError(
                "ops.dissection.baseline: random_init re-initialises the torch architecture, which an "
                "ONNX file does not give; audit the torch model or set baseline: none"
            )
        if not params.layers and not self.model.layer_names:
            raise ValueError("ops.dissection.layers: no layer to dissect; list convolutional layers in model.layers")
        self._require_model_layers("dissection", params.layers, "its activations are exported for dissection")
        return self

    @model_validator(mode="after")
    def _activation_max_fits_model(self) -> AuditSpec:
        params = self.ops.activation_max
        if params is None:
            return self
        if self.model.source in ("onnx", "sklearn"):
            raise ValueError(
                f"ops.activation_max: activation maximization follows gradients, which an {self.model.source} "
                "model does not give; audit a torch model (model.source: torch) or remove ops.activation_max"
            )
        if not params.layers and not self.model.layer_names:
            raise ValueError("ops.activation_max.layers: no layer to visualize; list one in model.layers")
        self._require_image_model("activation_max")
        self._require_model_layers("activation_max", params.layers, "its activations give the exemplars")
        return self

    @model_validator(mode="after")
    def _lime_sanity_fits_model(self) -> AuditSpec:
        if self.ops.lime is None or self.ops.lime.sanity is None:
            return self
        if self.model.source in ("onnx", "sklearn"):
            raise ValueError(
                f"ops.lime.sanity: the check re-draws the weights of the torch architecture, which an "
                f"{self.model.source} model does not give; audit the torch model or remove ops.lime.sanity"
            )
        self._require_image_model("lime.sanity")
        return self

    @model_validator(mode="after")
    def _ablation_fits_model(self) -> AuditSpec:
        params = self.ops.ablation
        if params is None:
            return self
        if not params.layers and not self.model.layer_names:
            raise ValueError("ops.ablation.layers: no layer to ablate; list one in model.layers")
        self._require_model_layers("ablation", params.layers, "its activations are where units are zeroed")
        if params.units == "detectors":
            if self.ops.dissection is None:
                raise ValueError(
                    "ops.ablation.units: detectors are dissection's; add ops.dissection, or rank all units "
                    "(units: all) or a list of them"
                )
            dissected = self.ops.dissection.layers or self.model.layer_names
            for index, layer in enumerate(self.ablation_layers):
                if layer not in dissected:
                    raise ValueError(
                        f"ops.ablation.layers[{index}]: {layer!r} is not dissected ({dissected}), so it has no "
                        "detectors; dissect it (ops.dissection.layers) or set ops.ablation.units: all"
                    )
        return self

    @model_validator(mode="after")
    def _tcav_fits_model(self) -> AuditSpec:
        params = self.ops.tcav
        if params is None:
            return self
        if self.model.source in ("onnx", "sklearn"):
            raise ValueError(
                f"ops.tcav: TCAV differentiates class logits w.r.t. a layer, which an {self.model.source} model does "
                "not give; audit a torch model (model.source: torch) or remove ops.tcav"
            )
        if not params.layers and not self.model.layer_names:
            raise ValueError("ops.tcav.layers: no layer to test; list one in model.layers")
        self._require_model_layers("tcav", params.layers, "its activations are what the CAVs separate")
        if params.named_in_source:
            self._require_image_model("tcav.concepts")
        return self

    @model_validator(mode="after")
    def _probes_fit_model(self) -> AuditSpec:
        params = self.ops.probes
        if params is None:
            return self
        if not params.layers and not self.model.layer_names:
            raise ValueError("ops.probes.layers: no layer to probe; list one in model.layers")
        self._require_model_layers("probes", params.layers, "its activations are what the probes read")
        if params.attribute_names("concept"):
            self._require_image_model("probes.attributes")
        if params.attribute_names("column") and len(self.model.input.shape) != 1:
            raise ValueError(
                "ops.probes.attributes: column:NAME probes a column of tabular data, and this model takes images "
                f"{self.model.input.shape}; probe class or concept:NAME"
            )
        return self

    @property
    def probe_layers(self) -> list[str]:
        params = self.ops.probes
        return [] if params is None else list(params.layers or self.model.layer_names)

    @property
    def tcav_layers(self) -> list[str]:
        params = self.ops.tcav
        return [] if params is None else list(params.layers or self.model.layer_names)

    @property
    def ablation_layers(self) -> list[str]:
        params = self.ops.ablation
        return [] if params is None else list(params.layers or self.model.layer_names[-1:])

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
            if gate.metric == "lime.randomised_similarity" and self.ops.lime.sanity is None:
                raise ValueError(
                    f"gates[{index}]: {gate.metric} reads the sanity check's table; add ops.lime.sanity "
                    "(e.g. sanity: {samples: 4, steps: 3}) or remove the gate"
                )
            if gate.metric == "activation_max.share_beating_random" and not self.ops.activation_max.sanity:
                raise ValueError(
                    f"gates[{index}]: {gate.metric} compares with the re-drawn copy's renders; set "
                    "ops.activation_max.sanity: true or remove the gate"
                )
            if isinstance(gate, LimeRegionGate) and len(self.model.input.shape) != 3:
                raise ValueError(f"gates[{index}]: lime.region_share needs an image model")
            if (
                isinstance(gate, DetectorsGate)
                and gate.layer is not None
                and gate.layer not in (self.ops.dissection.layers or self.model.layer_names)
            ):
                raise ValueError(
                    f"gates[{index}].layer: {gate.layer!r} is not a dissected layer "
                    f"{self.ops.dissection.layers or self.model.layer_names}"
                )
            if isinstance(gate, AblationGate):
                if gate.layer is not None and gate.layer not in self.ablation_layers:
                    raise ValueError(
                        f"gates[{index}].layer: {gate.layer!r} is not an ablated layer {self.ablation_layers}"
                    )
                if gate.k is not None and gate.k not in self.ops.ablation.sizes:
                    raise ValueError(
                        f"gates[{index}].k: {gate.k} is not one of ops.ablation.sizes {self.ops.ablation.sizes}"
                    )
            if isinstance(gate, TcavGate):
                if gate.concept not in self.ops.tcav.concepts:
                    raise ValueError(
                        f"gates[{index}].concept: {gate.concept!r} is not one of ops.tcav.concepts "
                        f"{list(self.ops.tcav.concepts)}"
                    )
                if gate.layer is not None and gate.layer not in self.tcav_layers:
                    raise ValueError(f"gates[{index}].layer: {gate.layer!r} is not a tested layer {self.tcav_layers}")
            if isinstance(gate, ProbeGate):
                if gate.attribute not in self.ops.probes.attributes:
                    raise ValueError(
                        f"gates[{index}].attribute: {gate.attribute!r} is not one of ops.probes.attributes "
                        f"{self.ops.probes.attributes}"
                    )
                if gate.layer is not None and gate.layer not in self.probe_layers:
                    raise ValueError(f"gates[{index}].layer: {gate.layer!r} is not a probed layer {self.probe_layers}")
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
        selected = [name for name in declared if only is None or name in only]
        if "ablation" in selected and self.ops.ablation.units == "detectors" and "dissection" not in selected:
            raise SpecError("--only: ablation ranks dissection's detectors (ops.ablation.units); add --only dissection")
        return selected
