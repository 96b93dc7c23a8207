"""The spec's ``gates`` block: verdicts on aggregate metrics and on the diff with the baseline version."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from interp_audit.spec.fields import Float, Int, SafeName, StrictModel, refuse_unless


class RegionSpec(StrictModel):
    """An image region as fractions of width and height: the four corner squares, or explicit boxes."""

    corners: Annotated[Float, refuse_unless(lambda v: 0 < v <= 0.5, "must be in (0, 0.5]")] | None = Field(
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
    metric: Literal["activation_max.share_beating_dataset", "activation_max.share_beating_random"] = Field(
        description="share of renders that drive their unit past every dataset image (beating_dataset), or whose "
        "ratio beats that of the same unit of the copy with re-drawn weights (beating_random; needs "
        "ops.activation_max.sanity)"
    )


class AblationGate(_GateBase):
    metric: Literal["ablation.max_drop"] = Field(
        description="largest drop of a class's balanced accuracy when its K most important units are zeroed: "
        "a model whose few units carry a whole class is fragile"
    )
    layer: str | None = Field(None, description="only this ablated layer (default: all)")
    k: int | None = Field(None, description="K, one of ops.ablation.sizes (default: the smallest)")


class LimeSanityGate(_GateBase):
    metric: Literal["lime.randomised_similarity"] = Field(
        description="highest mean rank similarity, over the randomisation steps of ops.lime.sanity, of LIME's "
        "explanations under the re-drawn copies to its explanations under the model: high means they ignore the model"
    )


class TcavGate(_GateBase):
    metric: Literal["tcav.score"] = Field(
        description="the concept's TCAV score for the class (the highest over the layers tested, or at layer); a "
        "score not significantly different from the random sets' counts as 0.5, no dependence either way"
    )
    concept: str = Field(description="one of ops.tcav.concepts")
    class_: Int | str = Field(alias="class", description="the class, by name or index (one of ops.tcav.classes)")
    layer: str | None = Field(None, description="only this layer of ops.tcav.layers (default: the highest score)")


class ProbeGate(_GateBase):
    metric: Literal["probes.selectivity"] = Field(
        description="how readable the attribute is beyond the probe's control task: its selectivity at layer, or "
        "the highest over the probed layers (max: an attribute the model must not encode; min: one it must)"
    )
    attribute: str = Field(description="one of ops.probes.attributes")
    layer: str | None = Field(None, description="only this probed layer (default: the highest selectivity)")


GATES = (DetectorsGate, LimeRegionGate, DiffGate, ActmaxGate, AblationGate, LimeSanityGate, TcavGate, ProbeGate)
Gate = Annotated[
    DetectorsGate | LimeRegionGate | DiffGate | ActmaxGate | AblationGate | LimeSanityGate | TcavGate | ProbeGate,
    Field(discriminator="metric"),
]


def gate_metrics() -> list[str]:
    return [metric for gate in GATES for metric in gate.model_fields["metric"].annotation.__args__]
