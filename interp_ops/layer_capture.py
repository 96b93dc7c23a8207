"""Forward hooks that capture the outputs of a model's named modules, for the ONNX bundle (export, parity, the
preflight probe) and for activation maximization.

Only the named modules are hooked, and only inside a ``with`` block: entering registers the hooks, leaving removes
them whatever happened inside, so the caller's model is left without any.

A transformer block outputs tokens, ``[batch, tokens, dim]``; given the layer's :class:`TokenGrid`, the capture
hands it on as a ``[batch, dim, rows, cols]`` map, so every method reads it as it reads a convolution's output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from interp_ops.token_grid import TokenGrid


class LayersReached(Exception):
    """Raised by a ``stop`` capture's hook once every captured layer has run: the rest of the forward is skipped."""


class LayerCapture:
    """``outputs[layer]`` is the named module's output in the forward that runs (its latest call, where a module
    runs twice), as a map where ``grids`` gives the layer's token grid. With ``stop=True`` a hook raises :class:`LayersReached` as soon as every named module has run, for
    a forward that needs nothing past them; whoever runs the model catches it. A name the model lacks is a KeyError:
    callers check names first, with messages of their own."""

    def __init__(
        self,
        model: torch.nn.Module,
        layers: Sequence[str],
        stop: bool = False,
        grids: Mapping[str, TokenGrid] | None = None,
    ):
        modules = dict(model.named_modules())
        self.model = model
        self.layers = list(layers)
        self.modules = {layer: modules[layer] for layer in self.layers}
        self.stop = stop
        self.grids = {layer: grid for layer, grid in (grids or {}).items() if layer in self.modules}
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
        grid = self.grids.get(layer)

        def hook(_module, _inputs, output):
            self.outputs[layer] = output if grid is None else grid.as_map(layer, output)
            if self.stop and len(self.outputs) == len(self.modules):
                raise LayersReached

        return hook
