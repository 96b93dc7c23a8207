"""Activation maximization: renders that drive a layer's units, and the dataset rows that drive them most.

Pure compute in Lucent's optvis shape (``param``, ``transforms``, ``objectives``, ``render``), plus ``exemplars``
for the dataset examples shown beside each render. No Prefect, no files.
"""

from interp_ops.actmax.exemplars import Exemplars, top_exemplars
from interp_ops.actmax.render import ActmaxError, UnitRenders, render_units

__all__ = ["ActmaxError", "Exemplars", "UnitRenders", "render_units", "top_exemplars"]
