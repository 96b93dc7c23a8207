"""The random-weights baseline: the same architecture re-initialised, whose detectors are what chance alone gives."""

from __future__ import annotations

import copy
import warnings

import torch


def random_init_copy(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A copy of ``model`` with every module's ``reset_parameters()`` called in module order under ``seed``.

    Batch-norm running statistics are reset too (their reset_parameters does it). Initialised on the CPU and
    moved back, so the baseline does not depend on the device; the global RNG state is left as it was.
    Parameters of modules without reset_parameters keep their values, with a warning naming the modules.
    """
    devices = {parameter.device for parameter in model.parameters()}
    baseline = copy.deepcopy(model).cpu()
    untouched = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, module in baseline.named_modules():
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
            "their trained values in the random baseline",
            stacklevel=2,
        )
    return baseline.to(devices.pop()) if len(devices) == 1 else baseline
