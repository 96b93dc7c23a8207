"""Forward hooks that capture the outputs of a model's named modules, for the ONNX bundle (export, parity, the
preflight probe) and for activation maximization.

Only the named modules are hooked, and only inside a ``with`` block: entering registers the hooks, leaving removes
them whatever happened inside, so the caller's model is left without any.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class LayersReached(Exception):
    """Raised by a ``stop`` capture's hook once every captured layer has run: the rest of the forward is skipped."""


class LayerCapture:
    """``outputs[layer]`` is the named module's output in the forward that runs (its latest call, where a module
    runs twice). With ``stop=True`` a hook raises :class:`LayersReached` as soon as every named module has run, for
    a forward that needs nothing past them; whoever runs the model catches it. A name the model lacks is a KeyError:
    callers check names first, with messages of their own."""

    def __init__(self, model: torch.nn.Module, layers: Sequence[str], stop: bool = False):
        modules = dict(model.named_modules())
        self.model = model
        self.layers = list(layers)
        self.modules = {layer: modules[layer] for layer in self.layers}
        self.stop = stop
        self.outputs: dict[str, Tensor] = {}
        self._handles: list = []

    def __enter__(self) -> LayerCapture:
        self._handles = [module.register_forward_hook(self._hook(layer)) for layer, module in self.modules.items()]
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hook(self, layer: str):
        def hook(_module, _inputs, output):
            self.outputs[layer] = output
            if self.stop and len(self.outputs) == len(self.modules):
                raise LayersReached

        return hook
