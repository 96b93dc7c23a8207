"""Activation-maximization tasks: renders per batch of units, exemplars over the data, and their table rows."""

from __future__ import annotations

import math

from prefect import task

from interp_audit.blobs import materialized, materialized_inputs
from interp_audit.errors import SpecError
from interp_audit.inputs import ModelInputs
from interp_audit.intake import ModelRef, build_torch_model
from interp_audit.spec import InputSpec
from interp_ops import actmax, onnx_bundle
from interp_ops.datasets import to_display
from interp_ops.images import png_bytes
from interp_ops.randomisation import random_init_copy
from interp_ops.token_grid import TokenGrid
from tasks import CACHED
from tasks.gpu import compute_share


@task(name="actmax-render", **CACHED)
def render_unit_batch(
    model: ModelRef,
    layer: str,
    grid: TokenGrid | None,
    units: list[int],
    settings: dict,
    input_spec: InputSpec,
    seed: int,
    device: str,
    random_init_seed: int | None = None,
) -> actmax.UnitRenders:
    """Renders of ``units`` of ``layer`` (a map of its tokens where ``grid`` says how they lie), optimised as one
    batch; each unit's seed does not depend on the batch. ``settings``: ``ActivationMaxSpec.render_settings``,
    passed on to the renderer as they are. With ``random_init_seed``, the units rendered are those of the model's
    copy with every weight re-drawn under that seed (``export_random_baseline``'s copy): the sanity check."""
    with compute_share(device):  # the model is built in the task's slot: waiting tasks hold no copy of it
        torch_model = build_torch_model(model)
        if random_init_seed is not None:
            torch_model = random_init_copy(torch_model, random_init_seed)
        try:
            return actmax.render_units(
                torch_model,
                layer,
                units,
                input_shape=tuple(input_spec.shape),
                value_range=tuple(input_spec.range),
                mean=input_spec.mean,
                std=input_spec.std,
                seed=seed,
                device=device,
                grid=grid,
                **settings,
            )
        except actmax.ActmaxError as exc:  # e.g. a render size the model cannot take: bad input, exit 2
            raise SpecError(f"ops.activation_max: {exc}") from None


@task(name="actmax-exemplars", **CACHED)
def find_exemplars(
    onnx_bytes: bytes, inputs: ModelInputs, units: dict[str, list[int]], k: int, objective: str, device: str
) -> dict[str, actmax.Exemplars]:
    """The k most activating samples per unit, streamed through the audit's ONNX graph."""
    onnx_bytes, inputs = materialized(onnx_bytes), materialized_inputs(inputs)
    with compute_share(device) as threads:
        session = onnx_bundle.make_session(onnx_bytes, device, threads)
        return actmax.top_exemplars(
            session, inputs.x, list(units), units, k=min(k, len(inputs.ids)), objective=objective
        )


def actmax_rows(
    renders: list[actmax.UnitRenders],
    exemplars: dict[str, actmax.Exemplars],
    inputs: ModelInputs,
    input_spec: InputSpec,
    randomised: tuple[list[actmax.UnitRenders], dict[str, actmax.Exemplars]] | None = None,
) -> tuple[list[dict], list[dict]]:
    """Rows of ``actmax_units`` (with each render's ratio to its dataset maximum) and ``actmax_exemplars``;
    ``randomised``, the same units' renders and dataset maxima for the copy with re-drawn weights, fills the
    random_ratio and random_robustness columns (null without it)."""
    random_scores = {} if randomised is None else _scores(*randomised)
    unit_rows = []
    for result in renders:
        diversity = None if result.diversity is None else dict(zip(result.units, result.diversity.tolist()))
        for row, (key, (final, best, ratio, robustness)) in enumerate(_scores([result], exemplars).items()):
            random_ratio, random_robustness = random_scores.get(key, (None, None, None, None))[2:]
            unit_rows.append(
                {
                    "layer": result.layer,
                    "unit": key[1],
                    "render": key[2],
                    "objective": result.descriptions[row],
                    "render_png": png_bytes(result.images[row].transpose(1, 2, 0)),
                    "final_activation": final,
                    "dataset_max": best,
                    "ratio": ratio,
                    "robustness": robustness,
                    "random_ratio": random_ratio,
                    "random_robustness": random_robustness,
                    "diversity": None if diversity is None else diversity[key[1]],
                    "curve_steps": list(result.thresholds),
                    "curve": result.curve[row].astype(float).tolist(),
                }
            )
    shown = sorted({int(i) for found in exemplars.values() for i in found.indices.ravel()})
    display = dict(zip(shown, to_display(inputs.x[shown], input_spec.range, input_spec.mean, input_spec.std)))
    thumbnails = {index: png_bytes(image) for index, image in display.items()}
    exemplar_rows = [
        {
            "layer": layer,
            "unit": unit,
            "rank": rank + 1,
            "sample_id": inputs.ids[index],
            "activation": float(activation),
            "thumbnail_png": thumbnails[index],
        }
        for layer, found in exemplars.items()
        for unit, indices, activations in zip(found.units, found.indices, found.activations)
        for rank, (index, activation) in enumerate(zip(indices.tolist(), activations.tolist()))
    ]
    return unit_rows, exemplar_rows


def _scores(
    renders: list[actmax.UnitRenders], exemplars: dict[str, actmax.Exemplars]
) -> dict[tuple[str, int, int], tuple[float, float, float | None, float | None]]:
    """(layer, unit, render) -> final activation, dataset maximum, their ratio and the render's robustness, in
    the renders' row order."""
    scores = {}
    for result in renders:
        found = exemplars[result.layer]
        dataset_max = dict(zip(found.units, found.dataset_max.tolist()))
        for row in range(len(result.images)):
            unit = int(result.unit_of_row[row])
            final, best = float(result.final_activation[row]), dataset_max[unit]
            key = (result.layer, unit, int(result.render_index[row]))
            scores[key] = (final, best, final / best if best > 0 else None, _finite_or_none(result.robustness[row]))
    return scores


def _finite_or_none(value) -> float | None:
    """NaN (e.g. a ratio to a dead unit's zero activation) is stored as null, which contracts treat as missing."""
    value = float(value)
    return value if math.isfinite(value) else None
