"""Everything that can be checked before any work starts: spec, files, model, layers, outputs, data.

``interp-audit validate`` runs exactly this; ``run`` runs it before starting Prefect, and the flow runs it
again first thing (a scheduled run has no CLI in front of it). Everything that fails here is exit code 2.
It reads the data's ids and a probe of its first PROBE_SAMPLES samples; the whole data set is read once per run,
by the flow, after this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from interp_audit.errors import SpecError
from interp_audit.inputs import ConceptData, ConceptImages, concepts_error, inputs_probe, load_concepts
from interp_audit.intake import LayerShapes, ModelRef, check_model, resolve_model
from interp_audit.spec import (
    UNITS_FIRST,
    AblationSpec,
    ActivationMaxSpec,
    DissectionSpec,
    InputSpec,
    LimeSpec,
    LoadedSpec,
    TcavGate,
    TcavSpec,
)
from interp_audit.store import ReportStore

PROBE_SAMPLES = 32  # the samples the model is checked on before the run


@dataclass(frozen=True)
class Preflight:
    model: ModelRef
    num_samples: int
    num_classes: int
    device: str
    actmax_units: dict[str, list[int]] = field(default_factory=dict)  # layer -> units to visualize
    dissection_layers: list[str] = field(default_factory=list)
    concepts_fingerprint: str | None = None
    tcav: TcavPlan | None = None
    probe_concepts: ConceptImages | None = None  # the images concept:NAME attributes are probed on


@dataclass(frozen=True)
class TcavPlan:
    """The concepts' examples, the classes tested, and, for random sets drawn from the concept source, the images
    they draw (``random_pool``) and each set's positions among them (for random sets of the data: None, drawn by
    the flow, which knows every sample's label)."""

    concepts: dict[str, ConceptImages | ConceptData]
    classes: list[int]
    random_pool: ConceptImages | None = None
    random_sets: list[list[int]] | None = None


def resolve_device(requested: str) -> str:
    import torch

    if requested not in ("auto", "cpu", "cuda"):
        raise SpecError(f"--device: must be auto, cpu or cuda (got {requested!r})")
    if requested == "cuda" and not torch.cuda.is_available():
        raise SpecError("--device cuda: CUDA is not available on this machine; use --device auto or cpu")
    return "cuda:0" if requested != "cpu" and torch.cuda.is_available() else "cpu"


def preflight(
    loaded: LoadedSpec, device: str = "auto", store: str | None = None, model: ModelRef | None = None
) -> Preflight:
    """``model``: the model already resolved (a registry version fetched by its retried task)."""
    spec = loaded.spec
    resolved_device = resolve_device(device)
    ReportStore.open(store or spec.report.store).check_usable()
    ref = model or resolve_model(loaded, store)
    inputs = inputs_probe(spec.data, loaded.base_dir, spec.seed, spec.model.input, PROBE_SAMPLES)
    probe, probe_ids = inputs.x, inputs.ids[: len(inputs.x)]
    if ref.source != "torch":
        kind = "a scikit-learn" if spec.model.source == "sklearn" else "an ONNX"
        check_needs_torch(spec, f"model {spec.model.name} v{ref.version} is {kind} model")
    num_classes, layer_shapes = check_model(ref, spec.model, probe, probe_ids)
    if spec.ops.lime is not None:
        lime_sample_indices(spec.ops.lime, inputs.ids)
        lime_labels(spec.ops.lime, inputs.class_names, num_classes)
    units = (
        {}
        if spec.ops.activation_max is None
        else actmax_units(spec.ops.activation_max, spec.model.layer_names, layer_shapes)
    )
    dissected, concepts = [], None
    if spec.ops.dissection is not None:
        dissected = dissection_layers(spec.ops.dissection, spec.model.layer_names, layer_shapes)
        concepts = check_concepts(spec.ops.dissection.concepts, loaded.base_dir, spec.seed)
    if spec.ops.ablation is not None:
        check_ablation(spec.ops.ablation, spec.ablation_layers, layer_shapes, spec.model.token_grids, inputs.labelled)
    tcav = None
    if spec.ops.tcav is not None:
        tcav = tcav_plan(loaded, len(inputs.ids), inputs.class_names, num_classes)
    probed_concepts = None
    if spec.ops.probes is not None:
        probed_concepts = check_probes(loaded, inputs)
    return Preflight(
        ref, len(inputs.ids), num_classes, resolved_device, units, dissected, concepts, tcav, probed_concepts
    )


def check_probes(loaded: LoadedSpec, inputs) -> ConceptImages | None:
    """Every attribute exists: labels in the data for class, the column for column:NAME, the label in the concept
    source for concept:NAME; returns the concept source's images those are probed on (None without any)."""
    params, base_dir, seed = loaded.spec.ops.probes, loaded.base_dir, loaded.spec.seed
    if "class" in params.attributes and not inputs.labelled:
        raise SpecError(
            "ops.probes.attributes: class probes the data's labels, and the data gives none; give labelled data "
            "or probe concept:NAME or column:NAME"
        )
    for name in params.attribute_names("column"):
        if name not in (inputs.feature_names or []):
            raise SpecError(
                f"ops.probes.attributes: column:{name} is not a column of the data (its columns: "
                f"{', '.join(inputs.feature_names or []) or 'none named'})"
            )
    names = params.attribute_names("concept")
    if not names:
        return None
    from interp_ops.concepts import ConceptDataError, concepts_fingerprint

    concepts = load_concepts(params.concept_source, base_dir, seed, "ops.probes.concept_source")
    for name in names:
        try:
            concepts.known_label_ids(name)
        except ConceptDataError as exc:
            raise SpecError(
                f"ops.probes.attributes: concept:{name}: {exc} (ops.probes.concept_source: {params.concept_source})"
            ) from None
    return ConceptImages(
        params.concept_source,
        str(base_dir),
        concepts_fingerprint(params.concept_source, base_dir, seed),
        tuple(range(min(params.max_inputs or len(concepts), len(concepts)))),  # the set's first images
        loaded.spec.model.input,
        seed,
        "ops.probes.concept_source",
    )


def tcav_plan(loaded: LoadedSpec, num_samples: int, class_names: list[str] | None, num_classes: int) -> TcavPlan:
    """Every concept with enough examples, the data with enough samples for a random set, the classes tested, and
    the TCAV gates' classes among them."""
    spec, params = loaded.spec, loaded.spec.ops.tcav
    count = params.examples_per_concept
    if params.randoms_from_data and num_samples < count:
        raise SpecError(
            f"ops.tcav.examples_per_concept: each random set draws {count} samples of the data, which holds "
            f"{num_samples}; ask for fewer examples or give more data"
        )
    concepts = (
        named_concepts(params, loaded.base_dir, spec.seed, spec.model.input)
        if params.named_in_source
        else {
            name: concept_folder(name, uri, count, loaded.base_dir, spec.seed) for name, uri in params.concepts.items()
        }
    )
    random_pool, random_sets = None, None
    if not params.randoms_from_data:
        random_pool, random_sets = concept_source_randoms(params, loaded.base_dir, spec.seed, spec.model.input)
    classes = (
        list(range(num_classes))
        if params.classes == "all"
        else [class_index(c, f"ops.tcav.classes[{i}]", class_names, num_classes) for i, c in enumerate(params.classes)]
    )
    for index, gate in enumerate(spec.gates):
        if isinstance(gate, TcavGate):
            tested = class_index(gate.class_, f"gates[{index}].class", class_names, num_classes)
            if tested not in classes:
                raise SpecError(f"gates[{index}].class: class {gate.class_!r} is not among ops.tcav.classes")
    return TcavPlan(concepts, classes, random_pool, random_sets)


def concept_source_randoms(
    params: TcavSpec, base_dir: Path, seed: int, input_spec: InputSpec
) -> tuple[ConceptImages, list[list[int]]]:
    """Random sets of the concept source's images: the images drawn (each once) and each set's positions among
    them."""
    import numpy as np

    from interp_ops.concepts import concepts_fingerprint
    from interp_ops.tcav import TcavError, draw_random_sets

    uri = params.concept_source
    concepts = load_concepts(uri, base_dir, seed, "ops.tcav.concept_source")
    try:
        drawn = draw_random_sets(None, len(concepts), params.random_sets, params.examples_per_concept, seed)
    except TcavError as exc:
        raise SpecError(f"ops.tcav.random_source: concept_source {uri}: {exc}") from None
    images = np.unique(np.concatenate(drawn))
    pool = ConceptImages(
        uri,
        str(base_dir),
        concepts_fingerprint(uri, base_dir, seed),
        tuple(images.tolist()),
        input_spec,
        seed,
        "ops.tcav.concept_source",
    )
    return pool, [np.searchsorted(images, rows).tolist() for rows in drawn]


def named_concepts(params: TcavSpec, base_dir: Path, seed: int, input_spec: InputSpec) -> dict[str, ConceptImages]:
    """The concept source's images holding each named concept: the first ``examples_per_concept`` of each (read
    from the masks, which are decoded until every concept has them)."""
    from interp_ops.concepts import ConceptDataError, concepts_fingerprint

    field, uri, count = "ops.tcav.concepts", params.concept_source, params.examples_per_concept
    concepts = load_concepts(uri, base_dir, seed, "ops.tcav.concept_source")
    try:
        positions = concepts.images_with(params.named_in_source, count)
    except (ConceptDataError, OSError) as exc:
        raise SpecError(f"{field}: {str(exc).removeprefix('concepts: ')} (ops.tcav.concept_source: {uri})") from None
    for name, found in positions.items():
        if len(found) < count:
            raise SpecError(
                f"ops.tcav.examples_per_concept: concept {name!r} is present in {len(found)} image(s) of {uri}, "
                f"fewer than the {count} asked for; ask for fewer or give a concept source with more"
            )
    fingerprint = concepts_fingerprint(uri, base_dir, seed)
    return {
        name: ConceptImages(
            uri, str(base_dir), fingerprint, tuple(found[:count]), input_spec, seed, "ops.tcav.concept_source"
        )
        for name, found in positions.items()
    }


def concept_folder(name: str, uri: str, count: int, base_dir: Path, seed: int) -> ConceptData:
    """A concept given as a folder of images (or any data URI) with at least ``count`` of them."""
    from interp_ops.datasets import DataError, data_fingerprint, preview_samples

    field = f"ops.tcav.concepts.{name}"
    try:
        held = len(preview_samples(uri, base_dir, seed, 0).ids)
        fingerprint = data_fingerprint(uri, base_dir)
    except DataError as exc:
        raise SpecError(f"{field}: {str(exc).removeprefix('data: ')}") from None
    if held < count:
        raise SpecError(
            f"{field}: {uri} holds {held} example(s), fewer than ops.tcav.examples_per_concept ({count}); "
            "give more or ask for fewer"
        )
    return ConceptData(uri, fingerprint)


def check_needs_torch(spec, what: str) -> None:
    """Methods that need the torch module (gradients, re-initialisation) cannot run on an ONNX-only model."""
    if spec.ops.activation_max is not None:
        raise SpecError(
            f"ops.activation_max: {what}, which gives no gradients; register the torch model "
            "(interp_audit.registry.log_model) or remove ops.activation_max"
        )
    if spec.ops.lime is not None and spec.ops.lime.sanity is not None:
        raise SpecError(
            f"ops.lime.sanity: {what}, whose weights cannot be re-drawn; register the torch model "
            "(interp_audit.registry.log_model) or remove ops.lime.sanity"
        )
    if spec.ops.tcav is not None:
        raise SpecError(
            f"ops.tcav: {what}, which gives no gradients of its logits; register the torch model "
            "(interp_audit.registry.log_model) or remove ops.tcav"
        )
    if spec.ops.dissection is not None and spec.ops.dissection.baseline == "random_init":
        raise SpecError(
            f"ops.dissection.baseline: {what}, whose architecture cannot be re-initialised; register "
            "the torch model or set baseline: none"
        )


def dissection_layers(params: DissectionSpec, model_layers: list[str], layer_shapes: LayerShapes) -> list[str]:
    """The layers to dissect; each must have spatial output (C, H, W)."""
    if params.layers:
        for index, layer in enumerate(params.layers):
            if len(layer_shapes[layer]) != 3:
                raise SpecError(
                    f"ops.dissection.layers[{index}]: {layer!r} outputs shape {layer_shapes[layer]} "
                    "per sample, with no spatial dimensions; dissect a convolutional layer (C, H, W)"
                )
        return list(params.layers)
    spatial = [layer for layer in model_layers if len(layer_shapes[layer]) == 3]
    if not spatial:
        raise SpecError(
            f"ops.dissection.layers: none of model.layers {model_layers} has spatial output (C, H, W); "
            "list a convolutional layer in model.layers"
        )
    return spatial


def check_concepts(uri: str, base_dir: Path, seed: int) -> str:
    """Reads the concept set's index and the header of every mask (a PNG of its row's size), so that a broken
    folder stops the audit before any method runs; returns its fingerprint (the dissection tasks' cache key).
    Label ids inside masks show only when they are decoded, during dissection."""
    from interp_ops.concepts import ConceptDataError, concepts_fingerprint

    concepts = load_concepts(uri, base_dir, seed)
    try:
        concepts.check_mask_headers()
    except (ConceptDataError, OSError) as exc:
        raise concepts_error(exc) from None
    return concepts_fingerprint(uri, base_dir, seed)


def actmax_units(params: ActivationMaxSpec, model_layers: list[str], layer_shapes: LayerShapes) -> dict[str, list[int]]:
    """Layer -> unit indices to visualize, checked against each layer's real number of units (channels)."""
    resolved = {}
    for layer in params.layers or model_layers[-1:]:
        count = layer_shapes[layer][0]
        if params.units == "all":
            resolved[layer] = list(range(count))
        elif isinstance(params.units, str):
            resolved[layer] = list(range(min(int(UNITS_FIRST.match(params.units)["count"]), count)))
        else:
            outside = [unit for unit in params.units if unit >= count]
            if outside:
                raise SpecError(
                    f"ops.activation_max.units: unit {outside[0]} is out of range for layer {layer!r}, "
                    f"which has {count} units (0..{count - 1})"
                )
            resolved[layer] = list(params.units)
    return resolved


def check_ablation(
    params: AblationSpec, layers: list[str], layer_shapes: LayerShapes, token_grids: dict, labelled: bool
) -> None:
    """Ablation measures each class's accuracy against the data's labels, on a layer's units (its first axis)."""
    if not labelled:
        raise SpecError(
            "ops.ablation: the data gives no class labels, and ablation measures what each class's accuracy loses; "
            "audit labelled data (a builtin, an image folder with one subfolder per class, an .npz with 'labels')"
        )
    for index, layer in enumerate(layers):
        where = f"ops.ablation.layers[{index}]" if params.layers else "ops.ablation (the last of model.layers)"
        if layer in token_grids:
            raise SpecError(
                f"{where}: {layer!r} is a token layer; ablating its dims is not supported yet: ablate a layer "
                "with channels (C, H, W) or features (C,)"
            )
        count = layer_shapes[layer][0]
        if isinstance(params.units, list):
            outside = [unit for unit in params.units if unit >= count]
            if outside:
                raise SpecError(
                    f"ops.ablation.units: unit {outside[0]} is out of range for layer {layer!r}, which has {count} "
                    f"units (0..{count - 1})"
                )
        if params.top_units is not None and params.top_units > count:
            raise SpecError(
                f"ops.ablation.units: {params.units} asks for more units than layer {layer!r} has ({count}); "
                f"give top:K with K up to {count}, or all"
            )
        ranked = len(set(params.units)) if isinstance(params.units, list) else count
        too_big = [k for k in params.sizes if k > ranked]
        if too_big:
            what = "units listed in ops.ablation.units" if isinstance(params.units, list) else f"units of {layer!r}"
            raise SpecError(
                f"ops.ablation.sizes: {too_big[0]} is more than the {ranked} {what}; give sizes up to {ranked}"
            )


def lime_sample_indices(lime: LimeSpec, ids: list[str]) -> list[int]:
    """Which samples LIME explains: the first N, or the ones named by id."""
    if isinstance(lime.samples, int):
        return list(range(min(lime.samples, len(ids))))
    position = {sample_id: index for index, sample_id in enumerate(ids)}
    for index, sample_id in enumerate(lime.samples):
        if sample_id not in position:
            raise SpecError(
                f"ops.lime.samples[{index}]: no sample {sample_id!r} in the data; ids look like: {', '.join(ids[:5])}"
            )
    return [position[sample_id] for sample_id in lime.samples]


def lime_labels(lime: LimeSpec, class_names: list[str] | None, num_classes: int) -> list[int] | None:
    """Class indices to explain for every sample, or None for each sample's top-1."""
    if lime.labels == "top1":
        return None
    return [
        class_index(label, f"ops.lime.labels[{i}]", class_names, num_classes) for i, label in enumerate(lime.labels)
    ]


def class_index(label: int | str, field: str, class_names: list[str] | None, num_classes: int) -> int:
    """A class given by name or index, as the model's output index."""
    if isinstance(label, str):
        if not class_names or label not in class_names:
            raise SpecError(
                f"{field}: no class named {label!r}; classes are: "
                f"{', '.join(class_names) if class_names else 'unnamed (give indices or model.input.class_names)'}"
            )
        label = class_names.index(label)
    if not 0 <= label < num_classes:
        raise SpecError(f"{field}: class {label} is outside the model's classes 0..{num_classes - 1}")
    return label
