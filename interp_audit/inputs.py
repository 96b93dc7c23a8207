"""What the run reads, checked as preflight checks it: the samples as model input, and the concept set.

A leaf below both :mod:`interp_audit.preflight` (the validation step, which reads a probe of the first samples)
and the tasks (which read everything, once per run), so the tasks never import the validation step. Broken data
is bad input: a SpecError (exit 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from interp_audit.errors import SpecError
from interp_audit.spec import InputSpec
from interp_ops.datasets import DataError, Samples, data_fingerprint, load_samples, preview_samples, to_model_input


@dataclass(frozen=True)
class ModelInputs:
    """Samples converted to what the model takes."""

    ids: list[str]
    x: np.ndarray
    labels: np.ndarray | None
    class_names: list[str] | None
    feature_names: list[str] | None = None


@dataclass(frozen=True)
class InputsProbe:
    """The first samples as model input (equal to the first rows of ``ModelInputs.x``) with every sample's id: what
    preflight checks the model and the spec against without reading the whole data set."""

    ids: list[str]
    x: np.ndarray
    class_names: list[str] | None


def model_inputs(data_uri: str, base_dir: Path, seed: int, input_spec: InputSpec) -> ModelInputs:
    """Every sample, read and converted: the run's one read of the whole data set."""
    try:
        samples = load_samples(data_uri, base_dir, seed)
    except DataError as exc:
        raise SpecError(str(exc)) from None
    x = _converted(samples, samples.ids, data_uri, input_spec)
    return ModelInputs(
        samples.ids, x, samples.labels, input_spec.class_names or samples.class_names, samples.feature_names
    )


def inputs_probe(data_uri: str, base_dir: Path, seed: int, input_spec: InputSpec, count: int) -> InputsProbe:
    """The first ``count`` samples converted, and every sample's id; only those samples are decoded."""
    try:
        preview = preview_samples(data_uri, base_dir, seed, count)
    except DataError as exc:
        raise SpecError(str(exc)) from None
    x = _converted(preview.head, preview.ids, data_uri, input_spec)
    return InputsProbe(preview.ids, x, input_spec.class_names or preview.head.class_names)


def _converted(samples: Samples, ids: list[str], data_uri: str, input_spec: InputSpec) -> np.ndarray:
    """``samples`` as model input; ``ids`` are the whole data set's, which must hold a sample."""
    try:
        x = to_model_input(samples, tuple(input_spec.shape), tuple(input_spec.range), input_spec.mean, input_spec.std)
    except DataError as exc:
        raise SpecError(str(exc)) from None
    if len(ids) == 0:
        raise SpecError(f"data: '{data_uri}' holds no samples; give at least one")
    return x


def data_sha256(data_uri: str, base_dir: Path) -> str:
    """What the data holds, hashed: the key of the cached read of the whole data set."""
    try:
        return data_fingerprint(data_uri, base_dir)
    except DataError as exc:
        raise SpecError(str(exc)) from None


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
