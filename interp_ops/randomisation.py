"""Copies of a model with re-drawn weights: the random-init baseline of dissection (every module), and the cascading
randomisation of the sanity checks (Adebayo et al. 2018: the top module first, then one more at each step)."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Collection

import torch


def random_init_copy(model: torch.nn.Module, seed: int, modules: Collection[str] | None = None) -> torch.nn.Module:
    """A copy of ``model`` with the ``reset_parameters()`` of each module named in ``modules`` (default: every
    module) called in module order under ``seed``.

    Batch-norm running statistics are reset too (their reset_parameters does it). Initialised on the CPU and
    moved back, so the copy does not depend on the device; the global RNG state is left as it was.
    Parameters of modules without reset_parameters keep their values, with a warning naming the modules.
    """
    devices = {parameter.device for parameter in model.parameters()}
    randomised = copy.deepcopy(model).cpu()
    untouched = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, module in randomised.named_modules():
            if modules is not None and name not in modules:
                continue
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
            elif any(True for _ in module.parameters(recurse=False)):
                untouched.append(name or type(module).__name__)
            if isinstance(module, torch.nn.modules.batchnorm._NormBase):
                module.reset_running_stats()
    if untouched:
        warnings.warn(
            f"random_init_copy: modules {untouched} have no reset_parameters(); their parameters keep "
            "their trained values in the randomised copy",
            stacklevel=2,
        )
    return randomised.to(devices.pop()) if len(devices) == 1 else randomised


def cascade_order(model: torch.nn.Module) -> list[str]:
    """The modules that hold parameters of their own, the one nearest the output first (the reverse of module
    order, which is the order of the forward pass for the models this tool audits)."""
    return [name for name, module in model.named_modules() if any(True for _ in module.parameters(recurse=False))][::-1]


def cascading_copies(model: torch.nn.Module, seed: int, steps: int) -> list[tuple[str, torch.nn.Module]]:
    """``steps`` copies, the k-th with the top k modules of ``cascade_order`` re-drawn (each step's draws the
    same for the modules it shares with the step before: one seed per module); with the last module re-drawn."""
    order = cascade_order(model)[:steps]
    copies, current = [], model
    for index, name in enumerate(order):
        current = random_init_copy(current, seed + index, {name})
        copies.append((name, current))
    return copies
