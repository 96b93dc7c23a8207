"""The spec's ``ops`` block: one block of settings per interpretability method."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator

from interp_audit.spec.fields import (
    Float,
    Fraction,
    Int,
    NonNegativeInt,
    OpenFraction,
    PositiveFloat,
    PositiveInt,
    StrictModel,
    refuse_unless,
)


class SegmentationSpec(StrictModel):
    """Superpixels for image LIME; quickshift's defaults are the ``lime`` package's."""

    method: Literal["quickshift", "slic"] = "quickshift"
    kernel_size: PositiveFloat = 4
    max_dist: PositiveFloat = 200
    ratio: Fraction = 0.2
    n_segments: PositiveInt = Field(50, description="slic only")
    compactness: PositiveFloat = Field(10.0, description="slic only")


class LimeSanitySpec(StrictModel):
    """The cascading randomisation check (Adebayo et al. 2018): the same samples explained, with the same segments,
    perturbations and labels, by copies of the model whose weights are re-drawn from the top layer down."""

    samples: PositiveInt = Field(4, description="the first N explained samples are checked")
    steps: PositiveInt | Literal["all"] = Field(
        "all", description="layers re-drawn, one more per step from the output down: all of them, or the top N"
    )


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
    faithfulness_runs: NonNegativeInt = Field(
        50,
        description="random feature subsets hidden for the faithfulness correlation (Bhatt et al. 2020), one forward "
        "pass each per sample (0 = off, else at least 2)",
    )
    faithfulness_subset: OpenFraction = Field(
        0.25, description="share of a sample's features hidden in each faithfulness run"
    )
    samples_per_task: PositiveInt = Field(8, description="samples per Prefect task (the fan-out unit)")
    sanity: LimeSanitySpec | None = Field(
        None, description="explain randomised copies of the model and record how similar the explanations stay"
    )

    @field_validator("num_samples")
    @classmethod
    def _enough_samples(cls, value: int) -> int:
        if value < 2:
            raise ValueError(f"must be at least 2 perturbations to fit a surrogate (got {value})")
        return value

    @field_validator("faithfulness_runs")
    @classmethod
    def _enough_runs(cls, value: int) -> int:
        if value == 1:
            raise ValueError("must be 0 (off) or at least 2 runs: a correlation needs two points (got 1)")
        return value

    def explainer_settings(self) -> dict:
        """What a LIME task reads: how to explain, not which samples or labels nor how the flow batches them."""
        return self.model_dump(exclude={"samples", "labels", "samples_per_task", "sanity"})


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
    sanity: bool = Field(
        False,
        description="also render the same units of a copy of the model whose weights are all re-drawn (seeded, "
        "dissection's random-init baseline) and record its ratio and robustness beside the model's: a unit that "
        "learned something should be rendered better than one of a model that learned nothing",
    )

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
        return self.model_dump(exclude={"layers", "units", "exemplars", "sanity"})


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
    quantile: Annotated[Float, refuse_unless(lambda v: 0 < v < 0.5, "must lie strictly between 0 and 0.5")] = Field(
        0.005, description="share of each unit's activations counted as active (NetDissect: 0.005)"
    )
    iou_threshold: Annotated[Float, refuse_unless(lambda v: 0 < v <= 1, "must be in (0, 1]")] = Field(
        0.04, description="a unit detects its best concept when their IoU reaches this (NetDissect: 0.04)"
    )
    batch_size: PositiveInt = Field(64, description="concept images per ONNX Runtime call")
    baseline: Literal["random_init", "none"] = Field(
        "random_init", description="also dissect the same architecture with seeded random weights"
    )


class AblationSpec(StrictModel):
    """Unit ablation (Bau et al. 2020): zero each class's most important units of a layer and measure what the class
    loses, next to random units of the layer: whether the decision uses what the units detect."""

    layers: list[str] | None = Field(
        None,
        min_length=1,
        description="layers to ablate, each one of model.layers that every path to the logits goes through "
        "(default: the last of model.layers)",
    )
    units: Literal["all", "detectors"] | Annotated[str, Field(pattern=r"^top:[1-9][0-9]*$")] | list[NonNegativeInt] = (
        Field(
            "all",
            description="the units ranked per class: all of the layer's, dissection's detectors on the layer "
            "(needs ops.dissection), top:K (the K units whose zeroing alone lowers some class's probability most, "
            "found on the ranking half), or a list of unit indices",
        )
    )
    sizes: list[PositiveInt] = Field(
        [1, 4, 16], min_length=1, description="K: the K ranked units of largest effect on a class are zeroed together"
    )
    random_draws: NonNegativeInt = Field(10, description="random sets of K units of the layer per K, for comparison")
    batch_size: PositiveInt = Field(256, description="samples per ONNX Runtime call")

    @field_validator("units")
    @classmethod
    def _units(cls, units: str | list[int]) -> str | list[int]:
        if isinstance(units, list) and not units:
            raise ValueError("must name at least one unit (got [])")
        return units

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, sizes: list[int], info: ValidationInfo) -> list[int]:
        if len(set(sizes)) != len(sizes):
            raise ValueError(f"each size once (got {sizes})")
        top = _top_units(info.data.get("units"))
        if top is not None and max(sizes) > top:
            raise ValueError(
                f"{max(sizes)} is more than the {top} units of units: top:{top}; give sizes up to {top} or rank more"
            )
        return sorted(sizes)

    @property
    def top_units(self) -> int | None:
        """K of ``units: top:K``; None for the other forms."""
        return _top_units(self.units)


def _top_units(units) -> int | None:
    return int(units.split(":")[1]) if isinstance(units, str) and units.startswith("top:") else None


class TcavSpec(StrictModel):
    """TCAV (Kim et al. 2018): whether a human concept pushes a class's logit up, tested against random sets of the
    data (a two-sided t-test of the concept's scores against random-vs-random ones, Bonferroni-corrected)."""

    layers: list[str] | None = Field(
        None,
        min_length=1,
        description="layers whose activations the CAVs separate, each one of model.layers (default: all of them)",
    )
    concepts: Annotated[list[str], Field(min_length=1)] | Annotated[dict[str, str], Field(min_length=1)] = Field(
        description="names of labels of concept_source (its images where the label is present are the "
        "concept's examples), or name -> a folder of the concept's images (or any data URI: .npy/.npz, builtin:)"
    )
    concept_source: str = Field(
        "builtin:concepts",
        description="where concepts given by name are looked up: builtin:concepts?n=&size= or a Broden-format "
        "folder (path relative to the spec, or a pyarrow/fsspec URI)",
    )
    examples_per_concept: Annotated[
        Int,
        refuse_unless(lambda v: v >= 3, "must be at least 3 (a CAV holds a third of them out to measure its accuracy)"),
    ] = Field(50, description="examples of each concept, and the size of each random set")
    random_sets: Annotated[
        Int, refuse_unless(lambda v: v >= 2, "must be at least 2 (random sets are also tested against each other)")
    ] = Field(20, description="random sets of the data each concept is tested against (and each other, the null)")
    random_source: Literal["data", "concept_source"] | None = Field(
        None,
        description="where the random sets are drawn: the audit's data (classes in equal shares where it has "
        "labels) or images of concept_source; default: concept_source for concepts named in it (a CAV then "
        "separates the concept, not one image collection from another), data for concept folders",
    )
    classes: Literal["all"] | Annotated[list[Int | str], Field(min_length=1)] = Field(
        "all", description="classes whose logits are tested: all, or indices/names"
    )
    class_inputs: PositiveInt = Field(
        50,
        description="inputs scored per class: the first N samples of the class (by label; by the model's "
        "decision where the data has no labels)",
    )
    alpha: OpenFraction = Field(0.05, description="significance level before Bonferroni (concepts x layers x classes)")
    concepts_per_task: PositiveInt = Field(8, description="concepts tested per task (tasks fan out per layer)")
    batch_size: PositiveInt = Field(32, description="inputs per forward or backward pass")

    @field_validator("concepts")
    @classmethod
    def _concepts(cls, concepts: list[str] | dict[str, str]) -> list[str] | dict[str, str]:
        names = list(concepts)
        if any(not name.strip() for name in names):
            raise ValueError(f"a concept name is empty (got {names}); name each concept")
        if len(set(names)) != len(names):
            raise ValueError(f"each concept once (got {names})")
        return concepts

    @property
    def named_in_source(self) -> list[str]:
        """The concepts looked up in concept_source (the list form)."""
        return list(self.concepts) if isinstance(self.concepts, list) else []

    @property
    def randoms_from_data(self) -> bool:
        return (self.random_source or ("concept_source" if self.named_in_source else "data")) == "data"


PROBE_ATTRIBUTE = re.compile(r"^(class|concept:(?P<concept>.+)|column:(?P<column>.+))$")


class ProbesSpec(StrictModel):
    """Linear probes (Alain & Bengio 2016) with control tasks (Hewitt & Liang 2019): how well a linear classifier
    reads an attribute off each layer's pooled activations, beyond what it scores on labels unrelated to the input."""

    layers: list[str] | None = Field(
        None, min_length=1, description="layers probed, each one of model.layers (default: all of them, in order)"
    )
    attributes: list[Annotated[str, Field(pattern=PROBE_ATTRIBUTE.pattern)]] = Field(
        ["class"],
        min_length=1,
        description="what is probed: class (the data's labels), concept:NAME (a label of concept_source present "
        "or not, probed on its images), column:NAME (a column of tabular data: its values, or quantile bins)",
    )
    concept_source: str = Field(
        "builtin:concepts",
        description="images and labels for concept:NAME attributes: builtin:concepts?n=&size= or a Broden-format "
        "folder",
    )
    max_inputs: PositiveInt | None = Field(
        None, description="probe on at most the first N inputs (of the data, and of the concept source)"
    )
    folds: Annotated[Int, refuse_unless(lambda v: v >= 2, "must be at least 2 (cross-validation)")] = Field(
        5, description="cross-validation folds (stratified, shuffled with the seed)"
    )
    bins: Annotated[Int, refuse_unless(lambda v: v >= 2, "must be at least 2")] = Field(
        2, description="quantile bins of a numeric column with many values (2: above or below the median)"
    )
    batch_size: PositiveInt = Field(64, description="inputs per ONNX Runtime call")

    @field_validator("attributes")
    @classmethod
    def _attributes(cls, attributes: list[str]) -> list[str]:
        if len(set(attributes)) != len(attributes):
            raise ValueError(f"each attribute once (got {attributes})")
        return attributes

    def attribute_names(self, kind: str) -> list[str]:
        """The NAMEs of the concept:NAME or column:NAME attributes (``kind``: concept or column)."""
        return [match[kind] for attribute in self.attributes if (match := PROBE_ATTRIBUTE.match(attribute))[kind]]


class OpsSpec(StrictModel):
    """One block per interpretability method; each method issue adds its block here."""

    lime: LimeSpec | None = None
    activation_max: ActivationMaxSpec | None = None
    dissection: DissectionSpec | None = None
    ablation: AblationSpec | None = None
    tcav: TcavSpec | None = None
    probes: ProbesSpec | None = None
