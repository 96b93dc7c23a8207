"""What the tasks read at run time, checked as preflight checks it: the samples as model input, and the concept set.

A leaf below both :mod:`interp_audit.preflight` (the validation step, which loads them first) and the tasks
(which load them again where they run), so the tasks never import the validation step. Broken data is bad
input: a SpecError (exit 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from interp_audit.errors import SpecError
from interp_audit.spec import InputSpec
from interp_ops.datasets import DataError, load_samples, to_model_input


@dataclass(frozen=True)
class ModelInputs:
    """Samples converted to what the model takes."""

    ids: list[str]
    x: np.ndarray
    labels: np.ndarray | None
    class_names: list[str] | None
    feature_names: list[str] | None = None


def model_inputs(data_uri: str, base_dir: Path, seed: int, input_spec: InputSpec) -> ModelInputs:
    try:
        samples = load_samples(data_uri, base_dir, seed)
        x = to_model_input(samples, tuple(input_spec.shape), tuple(input_spec.range), input_spec.mean, input_spec.std)
    except DataError as exc:
        raise SpecError(str(exc)) from None
    if len(samples.ids) == 0:
        raise SpecError(f"data: '{data_uri}' holds no samples; give at least one")
    return ModelInputs(
        samples.ids,
        x,
        samples.labels,
        input_spec.class_names or samples.class_names,
        getattr(samples, "feature_names", None),
    )


def load_concepts(uri: str, base_dir: Path, seed: int):
    """The spec's concept set (a builtin one is written on first use); a broken or empty one is bad input."""
    from interp_ops.concepts import ConceptDataError, resolve_concepts

    try:
        concepts = resolve_concepts(uri, base_dir, seed)
        if len(concepts) == 0:
            raise ConceptDataError(f"'{uri}' holds no images; give a Broden folder with images, or builtin:concepts")
        return concepts
    except (ConceptDataError, OSError) as exc:
        raise concepts_error(exc) from None


def concepts_error(exc: Exception) -> SpecError:
    """Broken concept data is bad input (exit 2), named as the spec names it."""
    return SpecError(f"ops.dissection.concepts: {str(exc).removeprefix('concepts: ')}")
