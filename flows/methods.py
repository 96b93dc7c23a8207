"""How the audit's methods fan out: every method's tasks submitted at once, their rows gathered as tables.

Every task submitted here is GPU-bound (it runs the model) but the torch exports of re-drawn copies (dissection's
random-init baseline, LIME sanity's cascade), which run on the CPU: ``task_resources`` turns that into what each asks
a Ray cluster for."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
from rich.markup import escape

import data_contracts
from flows.runners import fenced_by, shipping, task_resources
from interp_audit import progress
from interp_audit.preflight import lime_labels, lime_sample_indices
from interp_audit.readings import largest_drops, similarity_by_step, versus_random
from interp_ops import probes
from interp_ops.tcav import draw_random_sets
from tasks.ablation import ablate_layer
from tasks.actmax import actmax_rows, find_exemplars, render_unit_batch
from tasks.dissection import dissect_layer, dissection_tables, export_random_baseline
from tasks.inference import check_parity, predict
from tasks.lime import check_lime_sanity, explain_with_lime, export_randomised_cascade
from tasks.probes import concept_labels, probe_layer, probe_rows
from tasks.tcav import load_concept_examples, tcav_layer, tcav_rows


def method_tables(
    loaded, checked, inputs, onnx_export, methods: list[str], run_id: str, store_uri: str
) -> tuple[dict[str, pa.Table], bytes]:
    """Every method's tasks submitted at once (they fan out), then their rows collected as the run's tables; returns
    them with the audit's ONNX bundle. ``onnx_export``: the bundle's future. What needs only the torch model (the
    exports of the re-drawn copies, act-max's renders) is submitted before the bundle is ready, so that on a
    cluster it runs beside the export instead of after it."""
    spec = loaded.spec
    ship = shipping(store_uri)
    random_layers = random_init_layers(spec, checked, methods)
    with task_resources(gpu=False):
        baseline_export = (
            export_random_baseline.submit(
                checked.model,
                tuple(spec.model.input.shape),
                random_layers,
                spec.model.token_grids,
                spec.seed,
                wait_for=fenced_by([onnx_export]),  # one torch.export at a time
            )
            if random_layers
            else None
        )
        sanity = spec.ops.lime.sanity if "lime" in methods and spec.ops.lime is not None else None
        cascade_export = (
            export_randomised_cascade.submit(
                checked.model,
                tuple(spec.model.input.shape),
                None if sanity.steps == "all" else sanity.steps,
                spec.seed,
                wait_for=fenced_by([export for export in (onnx_export, baseline_export) if export is not None]),
            )
            if sanity is not None
            else None
        )
    # for parity and renders
    exports = fenced_by([export for export in (onnx_export, baseline_export, cascade_export) if export is not None])
    # the random-init copy's bundle serves dissection's baseline and act-max's sanity check: shipped once, when the
    # first of them needs it (waiting for the export then, not before the other tasks are submitted)
    baseline_bytes = functools.cache(lambda: ship(baseline_export.result()))
    with task_resources(gpu=True):
        renders = submit_renders(spec, checked, exports) if "activation_max" in methods else None
        random_renders = (
            submit_renders(spec, checked, exports, randomised=True)
            if "activation_max" in methods and spec.ops.activation_max.sanity
            else None
        )
    onnx_bytes = onnx_export.result()
    progress.step(
        f"ONNX bundle ready: logits + {len(spec.model.layer_names)} layer(s), {len(inputs.ids)} samples; "
        f"methods: {', '.join(methods) or 'none'}"
    )
    with task_resources(gpu=True):
        shipped_onnx, shipped_inputs = ship(onnx_bytes), ship(inputs)
        predictions = predict.submit(shipped_onnx, shipped_inputs, checked.device)
        parity = (
            check_parity.submit(
                checked.model,
                shipped_onnx,
                shipped_inputs,
                spec.model.layer_names,
                spec.model.token_grids,
                checked.device,
                wait_for=exports,
            )
            if checked.model.source == "torch"
            else None
        )
        lime_batches = submit_lime(spec, inputs, shipped_onnx, checked, ship) if "lime" in methods else []
        sanity_checked = (
            submit_lime_sanity(spec, inputs, shipped_onnx, checked, ship, cascade_export)
            if sanity is not None
            else None
        )
        exemplars = submit_exemplars(spec, shipped_inputs, shipped_onnx, checked) if renders is not None else None
        dissected = (
            submit_dissection(loaded, shipped_onnx, checked, baseline_bytes) if "dissection" in methods else None
        )
        random_exemplars = (
            submit_exemplars(spec, shipped_inputs, baseline_bytes(), checked, randomised=True)
            if random_renders is not None
            else None
        )
        ranks_all_units = "ablation" in methods and spec.ops.ablation.units != "detectors"
        ablated = submit_ablation(spec, shipped_onnx, shipped_inputs, checked, None) if ranks_all_units else {}
        tested = submit_tcav(loaded, checked, inputs, shipped_onnx, ship, predictions) if "tcav" in methods else None
        probed = submit_probes(loaded, checked, inputs, shipped_inputs, shipped_onnx) if "probes" in methods else []

    rows = {"predictions": predictions.result()}
    if lime_batches:
        explanations, attributions = zip(*resolved(lime_batches))
        rows["lime_explanations"] = [row for batch in explanations for row in batch]
        rows["lime_attributions"] = [row for batch in attributions for row in batch]
        progress.step(f"LIME: {len(rows['lime_explanations'])} explanations")
    if sanity_checked is not None:
        rows["sanity_checks"] = sanity_checked.result()
        progress.step(sanity_headline(rows["sanity_checks"]))
    if renders is not None:
        randomised = None if random_renders is None else (resolved(random_renders), random_exemplars.result())
        rows["actmax_units"], rows["actmax_exemplars"] = actmax_rows(
            resolved(renders), exemplars.result(), inputs, spec.model.input, randomised
        )
        progress.step(actmax_headline(rows["actmax_units"]))
    if dissected is not None:
        rows |= dissection_rows(loaded, *dissected)
        progress.step(
            f"dissection: {sum(r['is_detector'] for r in rows['dissection_units'])} detectors among "
            f"{len(rows['dissection_units'])} units"
        )
    effects = {}
    if "ablation" in methods:
        if not ranks_all_units:
            with task_resources(gpu=True):
                ablated = submit_ablation(spec, shipped_onnx, shipped_inputs, checked, rows["dissection_units"])
        effects = {layer: future.result() for layer, future in ablated.items()}
        rows["ablation_results"] = [{"layer": layer, **row} for layer, found in effects.items() for row in found.rows]
        progress.step(ablation_headline(rows["ablation_results"]))
    if dissected is not None:
        rows["dissection_units"] = with_unit_effects(rows["dissection_units"], effects)
    if tested is not None:
        futures, class_inputs = tested
        rows["tcav_scores"] = [
            row
            for layer, future in futures
            for row in tcav_rows(layer, future.result(), inputs.class_names, class_inputs)
        ]
        progress.step(tcav_headline(rows["tcav_scores"]))
    if probed:
        rows["probe_results"] = [row for *where, future in probed for row in probe_rows(*where, future.result())]
        progress.step(probes_headline(rows["probe_results"]))
    if parity is not None:
        rows["onnx_parity"] = parity.result()
        progress.step(f"parity: max abs diff {max(r['max_abs_diff'] for r in rows['onnx_parity']):.2e}")
    return {name: data_contracts.run_table(name, run_id, table) for name, table in rows.items()}, onnx_bytes


def submit_lime(spec, inputs, onnx_bytes, checked, ship) -> list:
    """One LIME task per batch of samples, all submitted at once; ``ship`` carries the big inputs (``shipping``)."""
    params = spec.ops.lime
    indices = lime_sample_indices(params, inputs.ids)
    labels = lime_labels(params, inputs.class_names, checked.num_classes)
    training_data = ship(inputs.x[:]) if inputs.x.ndim == 2 else None  # tabular: LIME's feature statistics
    futures = []
    for start in range(0, len(indices), params.samples_per_task):
        batch = indices[start : start + params.samples_per_task]
        futures.append(
            explain_with_lime.submit(
                onnx_bytes,
                ship(inputs.x[batch]),
                sample_ids=[inputs.ids[i] for i in batch],
                sample_keys=batch,
                labels=labels,
                settings=params.explainer_settings(),
                input_spec=spec.model.input,
                seed=spec.seed,
                device=checked.device,
                class_names=inputs.class_names,
                training_data=training_data,
                feature_names=inputs.feature_names,
            )
        )
    return futures


def submit_lime_sanity(spec, inputs, onnx_bytes, checked, ship, cascade_export):
    """One task: the first ``sanity.samples`` LIME samples explained by each randomised copy of the cascade."""
    params = spec.ops.lime
    batch = lime_sample_indices(params, inputs.ids)[: params.sanity.samples]
    return check_lime_sanity.submit(
        onnx_bytes,
        cascade_export,
        ship(inputs.x[batch]),
        sample_ids=[inputs.ids[i] for i in batch],
        sample_keys=batch,
        labels=lime_labels(params, inputs.class_names, checked.num_classes),
        settings=params.explainer_settings(),
        input_spec=spec.model.input,
        seed=spec.seed,
        device=checked.device,
    )


def sanity_headline(rows: list[dict]) -> str:
    steps = similarity_by_step(pd.DataFrame(rows))
    first, last = steps.iloc[0], steps.iloc[-1]
    return (
        f"LIME sanity: rank similarity to the model's explanations {first['mean']:.2f} with the top layer "
        f"re-drawn, {last['mean']:.2f} with {last['step']} layer(s)"
    )


def actmax_headline(rows: list[dict]) -> str:
    units = pd.DataFrame(rows)
    above = int((units["final_activation"] >= units["dataset_max"]).sum())
    line = f"activation maximization: {len(units)} renders, {above} drive their unit past every dataset image"
    randomised = versus_random(units)
    if len(randomised):
        line += (
            f"; {randomised['beating'].sum()} of {randomised['compared'].sum()} beat the ratio of the copy with "
            "re-drawn weights"
        )
    return line


def submit_exemplars(spec, inputs, onnx_bytes, checked, randomised: bool = False):
    """One pass over the data for the most activating samples of every rendered unit. ``randomised``: the sanity
    check's, on the bundle of the copy with re-drawn weights, for its dataset maxima only."""
    params = spec.ops.activation_max
    return find_exemplars.submit(
        onnx_bytes,
        inputs,
        checked.actmax_units,
        1 if randomised else params.exemplars,
        params.objective,
        checked.device,
    )


def submit_renders(spec, checked, exports: list, randomised: bool = False) -> list:
    """One render task per layer and batch of units, once the torch ``exports`` are done; they need the torch model
    only. ``randomised``: the units of the copy with every weight re-drawn (the sanity check)."""
    params = spec.ops.activation_max
    return [
        render_unit_batch.submit(
            checked.model,
            layer,
            spec.model.token_grids.get(layer),
            units[start : start + params.batch_units],
            settings=params.render_settings(),
            input_spec=spec.model.input,
            seed=spec.seed,
            device=checked.device,
            random_init_seed=spec.seed if randomised else None,
            wait_for=exports,
        )
        for layer, units in checked.actmax_units.items()
        for start in range(0, len(units), params.batch_units)
    ]


def random_init_layers(spec, checked, methods: list[str]) -> list[str]:
    """The layers the export of the copy with re-drawn weights gives: those dissection's random-init baseline
    dissects and those act-max's sanity check renders (one export serves both)."""
    layers = []
    if "dissection" in methods and spec.ops.dissection.baseline == "random_init":
        layers += checked.dissection_layers
    if "activation_max" in methods and spec.ops.activation_max.sanity:
        layers += [layer for layer in checked.actmax_units if layer not in layers]
    return layers


def submit_ablation(spec, onnx_bytes, inputs, checked, dissection_units: list[dict] | None) -> dict:
    """One ablation task per layer; ``dissection_units`` given, each layer's detectors are the units ranked (the
    sizes above their count are left out, with a warning; a layer without detectors is not ablated)."""
    params = spec.ops.ablation
    futures = {}
    for layer in spec.ablation_layers:
        candidates, sizes = params.units if isinstance(params.units, list) else None, params.sizes
        if dissection_units is not None:
            candidates = [r["unit"] for r in dissection_units if r["layer"] == layer and r["is_detector"]]
            sizes = [k for k in params.sizes if k <= len(candidates)]
            if len(sizes) < len(params.sizes):
                warnings.warn(
                    f"ops.ablation: {layer} has {len(candidates)} detector(s); sizes "
                    f"{[k for k in params.sizes if k > len(candidates)]} are left out",
                    stacklevel=2,
                )
            if not sizes:
                continue
        futures[layer] = ablate_layer.submit(
            onnx_bytes,
            inputs,
            layer,
            candidates,
            params.top_units,
            sizes,
            params.random_draws,
            checked.num_classes,
            params.batch_size,
            spec.seed,
            checked.device,
        )
    return futures


def ablation_headline(rows: list[dict]) -> str:
    if not rows:
        return "ablation: no layer ablated"
    drops = largest_drops(pd.DataFrame(rows))
    k = drops["k"].min()
    worst = drops.loc[drops[drops["k"] == k]["accuracy_drop"].idxmax()]
    return (
        f"ablation: {len(rows)} class x K results; zeroing {k} unit(s) costs {escape(worst['class_name'])} at most "
        f"{worst['accuracy_drop']:.2f} balanced accuracy ({escape(worst['layer'])})"
    )


def with_unit_effects(units: list[dict], effects: dict) -> list[dict]:
    """Dissection's units with their largest single-unit class effect where their layer was ablated."""
    by_unit = {(layer, row["unit"]): row for layer, found in effects.items() for row in found.units}
    rows = []
    for unit in units:
        effect = by_unit.get((unit["layer"], unit["unit"]), {})
        rows.append(
            {
                **unit,
                "ablation_class": effect.get("class_name"),
                "ablation_probability_drop": effect.get("probability_drop"),
                "ablation_accuracy_drop": effect.get("accuracy_drop"),
            }
        )
    return rows


def submit_dissection(loaded, onnx_bytes, checked, baseline_bytes) -> tuple[list, list | None]:
    """One dissection task per layer, for the model and for its random-init baseline (``baseline_bytes()``: its bundle,
    whose export is waited for here, so that its failure is raised as itself rather than as the unfinished
    dissections that need it)."""
    spec, params = loaded.spec, loaded.spec.ops.dissection
    concept_pass = dict(
        concepts_uri=params.concepts,
        base_dir=str(loaded.base_dir),
        concepts_fingerprint=checked.concepts_fingerprint,
        quantile=params.quantile,
        batch_size=params.batch_size,
        input_spec=spec.model.input,
        seed=spec.seed,
        device=checked.device,
    )
    results = [dissect_layer.submit(onnx_bytes, layer, **concept_pass) for layer in checked.dissection_layers]
    baselines = None
    if params.baseline == "random_init":
        baselines = [
            dissect_layer.submit(baseline_bytes(), layer, **concept_pass) for layer in checked.dissection_layers
        ]
    return results, baselines


def dissection_rows(loaded, results: list, baselines: list | None) -> dict[str, list[dict]]:
    """The three dissection tables, from the layers' results once every one has finished. A failed layer (a mask
    holding an unknown label: bad input) raises its own error here; handing the futures on to the tables task
    would raise only Prefect's UnfinishedRun of that task, and exit 3 instead of 2."""
    params = loaded.spec.ops.dissection
    return dissection_tables(
        resolved(results),
        None if baselines is None else resolved(baselines),
        params.concepts,
        str(loaded.base_dir),
        loaded.spec.seed,
        params.iou_threshold,
    )


def submit_tcav(loaded, checked, inputs, onnx_bytes, ship, predictions) -> tuple[list, dict[int, int]]:
    """One TCAV task per layer and batch of concepts, all at once, on the same concept examples, random sets and
    class inputs; returns (layer, future) pairs and each class's count of inputs. Without labels in the data, a
    class's inputs are those the model assigns it."""
    spec, params, plan = loaded.spec, loaded.spec.ops.tcav, checked.tcav
    examples = load_concept_examples.submit(
        plan.concepts, params.examples_per_concept, str(loaded.base_dir), spec.model.input, spec.seed
    ).result()
    labels = inputs.labels
    if labels is None:
        labels = np.array([row["predicted"] for row in predictions.result()], dtype=np.int64)
    if plan.random_pool is None:
        drawn = draw_random_sets(labels, len(inputs.ids), params.random_sets, params.examples_per_concept, spec.seed)
        pooled_rows = np.unique(np.concatenate(drawn))  # sets overlap: each row is read and run once
        pool = ship(inputs.x[pooled_rows])
        random_sets = [np.searchsorted(pooled_rows, rows) for rows in drawn]
    else:
        pooled = load_concept_examples.submit(
            {"random": plan.random_pool},
            len(plan.random_pool),
            str(loaded.base_dir),
            spec.model.input,
            spec.seed,
        ).result()
        pool, random_sets = ship(pooled["random"]), [np.asarray(rows) for rows in plan.random_sets]
    classes, counts = {}, {}
    for class_index in plan.classes:
        rows = np.flatnonzero(labels == class_index)[: params.class_inputs]
        if len(rows):
            classes[class_index], counts[class_index] = ship(inputs.x[rows]), len(rows)
        else:
            warnings.warn(f"ops.tcav: no input of class {class_index} in the data; it is not tested", stacklevel=2)
    names = list(plan.concepts)
    comparisons = len(names) * len(spec.tcav_layers) * max(len(classes), 1)  # Bonferroni over every test made
    futures = [
        (
            layer,
            tcav_layer.submit(
                checked.model,
                onnx_bytes,
                layer,
                spec.model.token_grids.get(layer),
                {name: ship(examples[name]) for name in names[start : start + params.concepts_per_task]},
                pool,
                random_sets,
                classes,
                spec.seed,
                params.alpha,
                comparisons,
                params.batch_size,
                checked.device,
            ),
        )
        for layer in spec.tcav_layers
        for start in range(0, len(names), params.concepts_per_task)
    ]
    return futures, counts


def tcav_headline(rows: list[dict]) -> str:
    significant = [row for row in rows if row["significant"]]
    line = f"TCAV: {len(significant)} of {len(rows)} concept x class x layer tests significant"
    if significant:
        top = max(significant, key=lambda row: abs(row["score_mean"] - 0.5))
        line += (
            f"; strongest: {escape(top['concept'])} -> {escape(top['class_name'])} at {escape(top['layer'])} "
            f"(score {top['score_mean']:.2f}, random {top['random_score_mean']:.2f})"
        )
    return line


def submit_probes(loaded, checked, inputs, shipped_inputs, onnx_bytes) -> list[tuple]:
    """One probe task per layer and set of inputs: the data (class and column:NAME attributes) and the concept
    source's images (concept:NAME); returns (layer, depth, inputs, count, future) tuples."""
    spec, params = loaded.spec, loaded.spec.ops.probes
    limit = params.max_inputs or len(inputs.ids)
    sets = []
    data_labels = {}
    if "class" in params.attributes:
        data_labels["class"] = inputs.labels[:limit]
    for name in params.attribute_names("column"):
        data_labels[f"column:{name}"] = probes.column_classes(inputs.x[:limit], inputs.feature_names, name, params.bins)
    if data_labels:
        sets.append(("data", shipped_inputs, min(limit, len(inputs.ids)), data_labels))
    names = params.attribute_names("concept")
    if names:
        images = checked.probe_concepts
        sets.append(("concept_source", images, len(images), concept_labels.submit(images, names).result()))
    return [
        (
            layer,
            spec.model.layer_names.index(layer),
            where,
            count,
            probe_layer.submit(
                onnx_bytes, layer, x, count, labels, params.folds, spec.seed, params.batch_size, checked.device
            ),
        )
        for layer in spec.probe_layers
        for where, x, count, labels in sets
    ]


def probes_headline(rows: list[dict]) -> str:
    best = max(rows, key=lambda row: row["selectivity"])
    return (
        f"probes: {len(rows)} layer x attribute results; most readable: {escape(best['attribute'])} at "
        f"{escape(best['layer'])} (accuracy {best['accuracy_mean']:.2f}, control {best['control_accuracy']:.2f}, "
        f"chance {best['chance']:.2f})"
    )


def resolved(futures: list) -> list:
    """The results of task futures, in order; the first failure is raised as the task's own exception."""
    return [future.result() for future in futures]
