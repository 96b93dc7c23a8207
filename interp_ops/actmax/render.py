"""Activation maximization (Olah et al. 2017, Lucid/Lucent's render_vis): for each unit of a layer, the image
that drives it highest, found by Adam through an image parameterization and random transforms.

What differs from Lucent, and why:
- Many units render at once, one batch element per unit and render, and batching changes nothing: each element
  draws its start and its transforms from a generator seeded by (seed, unit, render index) alone, its transforms
  are its own, the loss is the sum of the elements' objectives, the model runs in eval mode, and Adam is
  elementwise. A unit's trajectory is the same computation alone or in any batch; in float32 the convolutions round
  differently per batch size and Adam amplifies that to ~1e-3 relative after a few dozen steps (float64: identical).
- The device is an argument, all randomness comes from torch generators (the same call gives the same images),
  and only the audited layer is hooked; the forward stops there, so later layers cost nothing.
- Each render comes with scores: its objective curve, its activation without transforms, how much of that it
  keeps under fresh transforms, and how different a unit's renders are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from interp_ops.actmax import param as parameterizations
from interp_ops.actmax.objectives import OBJECTIVES, Objective
from interp_ops.actmax.transforms import TRANSFORMS, TransformChain
from interp_ops.layer_capture import LayerCapture, LayersReached
from interp_ops.normalization import Normalization, NormalizationError
from interp_ops.token_grid import TokenGrid


class ActmaxError(ValueError):
    """Input activation maximization cannot work with; the message names the field and the fix."""


@dataclass
class UnitRenders:
    """Renders of some units of one layer, one row per (unit, render), unit-major.

    ``curve[:, j]`` is the objective value the optimiser saw at step ``thresholds[j]``: under that step's random
    transforms, before that step's update. ``final_activation`` is the objective on the finished render without
    transforms, as the model's normal input; ``robustness`` is the mean objective under ``robustness_draws``
    fresh transforms divided by it (NaN where it is 0). ``diversity`` is, per unit, the mean pairwise cosine
    distance between the layer's spatially averaged activations on the unit's renders.
    """

    layer: str
    units: list[int]
    objective: str
    descriptions: list[str]
    images: np.ndarray  # (R, C, H, W) float32 in [0, 1]
    render_index: np.ndarray  # (R,) int64
    unit_of_row: np.ndarray  # (R,) int64
    thresholds: list[int]
    curve: np.ndarray  # (R, len(thresholds)) float32
    final_activation: np.ndarray  # (R,) float32
    robustness: np.ndarray  # (R,) float32
    diversity: np.ndarray | None  # (len(units),) float32, None with one render per unit


class LayerOutputs(LayerCapture):
    """Runs a model only as far as the named layers and returns their outputs as (B, K, h, w) maps.

    Hooks only those modules, and only inside the ``with`` block. The renderer hooks one layer, so the forward
    stops at that layer's first call.
    """

    def __init__(self, model: torch.nn.Module, layers: Sequence[str], grids: Mapping[str, TokenGrid] | None = None):
        modules = dict(model.named_modules())
        for layer in layers:
            if layer not in modules or not layer:
                names = [name for name in modules if name]
                shown = ", ".join(names[:60]) + (f", ... ({len(names)} in all)" if len(names) > 60 else "")
                raise ActmaxError(f"layer: the model has no module named {layer!r}; its modules are: {shown}")
        super().__init__(model, layers, stop=True, grids=grids)

    def __call__(self, x: Tensor) -> dict[str, Tensor]:
        self.outputs = {}
        try:
            self.model(x)
        except LayersReached:
            pass
        missing = [layer for layer in self.modules if layer not in self.outputs]
        if missing:
            raise ActmaxError(f"layer: {missing} never ran in the model's forward; audit a module the forward uses")
        return {layer: _as_maps(layer, output) for layer, output in self.outputs.items()}


def _as_maps(layer: str, output) -> Tensor:
    if isinstance(output, Tensor) and output.ndim == 4:
        return output
    if isinstance(output, Tensor) and output.ndim == 2:
        return output[:, :, None, None]
    shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
    raise ActmaxError(
        f"layer: {layer!r} outputs {shape}; activation maximization needs (N, K) or (N, K, H, W) "
        "tensors, so audit a layer with one of those outputs"
    )


@contextmanager
def frozen_for_render(model: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """Eval mode (BatchNorm and dropout must not couple batch elements), no parameter gradients, on `device`;
    each module's mode, each parameter's requires_grad and the model's device are restored afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    original = next(iter(model.parameters()), torch.empty(0)).device
    model.eval().requires_grad_(False).to(device)
    try:
        yield
    finally:
        model.to(original)
        for module, training in modes:
            module.training = training
        for parameter, requires_grad in flags:
            parameter.requires_grad_(requires_grad)


def _usable_device(device: str) -> torch.device:
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ActmaxError(f"device: {device!r} is not a torch device; use 'cpu' or 'cuda'") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ActmaxError(f"device: {device!r} asks for CUDA, which is not available here; use 'cpu'")
    return resolved


def _probe(outputs: LayerOutputs, layer: str, shape: tuple[int, ...], device: torch.device) -> Tensor:
    try:
        return outputs(torch.zeros(shape, device=device))[layer]
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ActmaxError(
            f"the model fails on a {'x'.join(map(str, shape[1:]))} input before layer {layer!r} "
            f"({first}); give image_size (or input_shape) the size the model takes"
        ) from None


def element_generator(seed: int, unit: int, render_index: int) -> torch.Generator:
    """A generator that depends on (seed, unit, render_index) alone, never on the element's place in a batch."""
    state = np.random.SeedSequence([seed, unit, render_index]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def _input_normalization(channels: int, value_range, mean, std) -> Normalization:
    try:
        return Normalization.checked(channels, value_range, mean, std)
    except NormalizationError as error:
        raise ActmaxError(str(error)) from None


def _default_thresholds(steps: int) -> list[int]:
    powers = [2**i for i in range(steps.bit_length()) if 2**i <= steps]
    return sorted(set(powers) | {steps})


def _check_settings(
    units: Sequence[int],
    input_shape,
    steps: int,
    lr: float,
    param: str,
    objective: str,
    transforms: str,
    image_size: int | None,
    batch_units: int,
    renders_per_unit: int,
    seed: int,
    thresholds: Sequence[int] | None,
    robustness_draws: int,
) -> list[int]:
    """Validate what can be checked without the model; returns the thresholds."""
    if len(tuple(input_shape)) != 3 or any(int(v) < 1 for v in input_shape):
        raise ActmaxError(f"input_shape: {tuple(input_shape)} must be the model's (C, H, W)")
    choices = {
        "objective": (objective, OBJECTIVES),
        "param": (param, parameterizations.PARAMETERIZATIONS),
        "transforms": (transforms, TRANSFORMS),
    }
    for field, (value, known) in choices.items():
        if value not in known:
            raise ActmaxError(f"{field}: unknown {field} {value!r}; use one of {', '.join(sorted(known))}")
    positive = {
        "steps": steps,
        "batch_units": batch_units,
        "renders_per_unit": renders_per_unit,
        "robustness_draws": robustness_draws,
        "image_size": 1 if image_size is None else image_size,
    }
    for field, value in positive.items():
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ActmaxError(f"{field}: {value!r} must be a whole number >= 1")
    if not lr > 0:
        raise ActmaxError(f"lr: {lr!r} must be positive (Adam's step size; 0.05 is Lucent's)")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ActmaxError(f"seed: {seed!r} must be a whole number >= 0")
    if len(units) == 0:
        raise ActmaxError("units: empty; give at least one unit index")
    if thresholds is None:
        return _default_thresholds(steps)
    wrong = [t for t in thresholds if not 1 <= t <= steps]
    if wrong:
        raise ActmaxError(f"thresholds: {wrong} are outside 1..{steps}; record the curve at steps from 1 to steps")
    return sorted(set(int(t) for t in thresholds) | {steps})


def render_units(
    model: torch.nn.Module,
    layer: str,
    units: Sequence[int],
    *,
    input_shape: tuple[int, int, int],
    value_range: tuple[float, float] = (0.0, 1.0),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    objective: str = "channel",
    steps: int = 256,
    lr: float = 0.05,
    param: str = "fft",
    decorrelate: bool = True,
    transforms: str = "standard",
    image_size: int | None = None,
    batch_units: int = 32,
    renders_per_unit: int = 1,
    seed: int = 0,
    device: str = "cpu",
    mixed_precision: bool = False,
    thresholds: Sequence[int] | None = None,
    robustness_draws: int = 8,
    progress: Callable[[int, int], None] | None = None,
    grid: TokenGrid | None = None,
) -> UnitRenders:
    """Render `renders_per_unit` images per unit of `layer` that maximise the `objective` for that unit.

    Renders live in [0, 1] display space and reach the model through ``interp_ops.normalization`` (value_range,
    then mean/std), as data images do in ``datasets.to_model_input``. They are input_shape's (H, W), or
    image_size x image_size; the model is fed that size (fine for CNNs that pool globally; ActmaxError if the model
    cannot take it). objective: "channel" (spatial mean of the unit's map) or "neuron" (the unit at the map's
    centre). param: "fft" (1/f-scaled spectrum) or "pixel". decorrelate applies Lucid's colour decorrelation to
    3-channel models only.
    transforms: "standard" (Lucent's standard_transforms, drawn per element) or "none". batch_units units
    are optimised as one batch of batch_units * renders_per_unit elements. mixed_precision runs the model under
    bfloat16 autocast on CUDA and is ignored on CPU. thresholds: steps at which the curve is recorded (default
    powers of two and the last step). progress(units_done, units_total) is called after each batch. grid: how the
    layer's tokens lie, for a transformer layer (its units are then the token dims, over the patch tokens' map).
    The model's mode, parameter flags and device are restored afterwards; its parameters get no gradients.
    """
    units = [int(u) for u in units]
    thresholds = _check_settings(
        units,
        input_shape,
        steps,
        lr,
        param,
        objective,
        transforms,
        image_size,
        batch_units,
        renders_per_unit,
        seed,
        thresholds,
        robustness_draws,
    )
    channels, height, width = (int(v) for v in input_shape)
    window = (height, width) if image_size is None else (image_size, image_size)
    device = _usable_device(device)
    normalization = _input_normalization(channels, value_range, mean, std)
    chain = TransformChain(TRANSFORMS[transforms])
    build_objective = OBJECTIVES[objective]
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if mixed_precision and device.type == "cuda" else nullcontext()
    )
    outputs = LayerOutputs(model, [layer], {layer: grid} if grid else None)
    parts: list[dict[str, Tensor]] = []
    with frozen_for_render(model, device), outputs:
        with torch.no_grad():
            count = _probe(outputs, layer, (1, channels, *window), device).shape[1]
        outside = sorted({u for u in units if not 0 <= u < count})
        if outside:
            raise ActmaxError(
                f"units: {outside} are out of range for layer {layer!r}, which has {count} units (0..{count - 1})"
            )
        for start in range(0, len(units), batch_units):
            batch = [(u, r) for u in units[start : start + batch_units] for r in range(renders_per_unit)]
            generators = [element_generator(seed, u, r) for u, r in batch]
            params, image_fn = parameterizations.image((channels, *window), generators, device, param, decorrelate)
            # the transforms of every step, and of the robustness check after the last, from each element's stream
            uniforms = torch.stack(
                [torch.rand((steps + robustness_draws, chain.draws), generator=g) for g in generators], dim=1
            )
            thetas = chain.thetas(uniforms, window).to(device)  # (steps + draws, B, 2, 3)
            unit_index = torch.tensor([u for u, _ in batch], device=device)
            parts.append(
                _optimise(
                    lambda images: outputs(normalization.apply(images, channel_axis=1)),
                    build_objective(layer, unit_index),
                    image_fn,
                    params,
                    chain,
                    thetas,
                    steps,
                    lr,
                    thresholds,
                    autocast,
                )
            )
            if progress is not None:
                progress(min(start + batch_units, len(units)), len(units))
    descriptions = [build_objective(layer, u).description for u in units for _ in range(renders_per_unit)]
    return _assemble(layer, units, objective, renders_per_unit, thresholds, parts, descriptions)


def _optimise(
    model_layers: Callable[[Tensor], dict[str, Tensor]],
    objective: Objective,
    image_fn,
    params,
    chain: TransformChain,
    thetas: Tensor,
    steps: int,
    lr: float,
    thresholds: list[int],
    autocast,
) -> dict[str, Tensor]:
    """Adam on one batch; the per-step work is one parameterization, transform, partial forward and backward."""
    column = {step: j for j, step in enumerate(thresholds)}
    curve = torch.empty((len(thetas[0]), len(thresholds)), device=thetas.device)
    optimizer = torch.optim.Adam(params, lr=lr)
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            values = objective(model_layers(chain(image_fn(), thetas[step]))).float()
        # a sum, not a mean: each element's gradient is its own, whatever the batch size
        (-values.sum()).backward()
        optimizer.step()
        if step + 1 in column:
            curve[:, column[step + 1]] = values.detach()
    with torch.no_grad(), autocast:
        images = image_fn()
        activations = model_layers(images)
        final = objective(activations).float()
        robust = torch.stack([objective(model_layers(chain(images, theta))).float() for theta in thetas[steps:]])
        layer_maps = next(iter(activations.values()))  # the audited layer, the only one hooked
    return {
        "images": images.float(),
        "curve": curve,
        "final": final,
        "robust": robust.mean(dim=0),
        "features": layer_maps.float().mean(dim=(2, 3)),
    }


def _diversity(features: np.ndarray) -> np.ndarray:
    """Mean pairwise cosine distance among each unit's renders; features (U, renders, K)."""
    norms = np.linalg.norm(features, axis=2, keepdims=True)
    directions = features / np.maximum(norms, 1e-12)
    similarity = directions @ directions.transpose(0, 2, 1)
    first, second = np.triu_indices(features.shape[1], k=1)
    return (1.0 - similarity[:, first, second]).mean(axis=1).astype(np.float32)


def _assemble(
    layer: str,
    units: list[int],
    objective: str,
    renders_per_unit: int,
    thresholds: list[int],
    parts: list[dict[str, Tensor]],
    descriptions: list[str],
) -> UnitRenders:
    joined = {key: torch.cat([part[key] for part in parts]).cpu().numpy().astype(np.float32) for key in parts[0]}
    final = joined["final"]
    with np.errstate(divide="ignore", invalid="ignore"):
        robustness = np.where(final != 0, joined["robust"] / final, np.nan).astype(np.float32)
    features = joined["features"].reshape(len(units), renders_per_unit, -1)
    return UnitRenders(
        layer=layer,
        units=units,
        objective=objective,
        descriptions=descriptions,
        images=joined["images"],
        render_index=np.tile(np.arange(renders_per_unit, dtype=np.int64), len(units)),
        unit_of_row=np.repeat(np.asarray(units, dtype=np.int64), renders_per_unit),
        thresholds=thresholds,
        curve=joined["curve"],
        final_activation=final,
        robustness=robustness,
        diversity=_diversity(features) if renders_per_unit > 1 else None,
    )
