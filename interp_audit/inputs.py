"""What the run reads, checked as preflight checks it: the samples as model input, and the concept set.

A leaf below both :mod:`interp_audit.preflight` (the validation step, which reads a probe of the first samples)
and the tasks (which read everything, once per run), so the tasks never import the validation step. Broken data
is bad input: a SpecError (exit 2).
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from interp_audit.errors import SpecError
from interp_audit.spec import InputSpec
from interp_ops import datasets, normalization, sample_file
from interp_ops import samples as sample_readers
from interp_ops.cache_dirs import cache_dir, write_atomically
from interp_ops.datasets import DataError, Samples, data_fingerprint, preview_samples, sample_chunks, to_model_input
from interp_ops.sample_file import BATCH_ROWS, SampleFile, open_sample_file, write_sample_file


@dataclass(frozen=True)
class ModelInputs:
    """Samples converted to what the model takes. ``x`` indexes like an array: on disk (a ``SampleFile``, read a
    batch at a time) as the run reads it, or in memory (on a Ray worker, or given by a test)."""

    ids: list[str]
    x: SampleFile | np.ndarray
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
    labelled: bool  # whether the data gives each sample a class label
    feature_names: list[str] | None = None


@dataclass(frozen=True)
class ConceptImages:
    """The images at ``positions`` of a concept set as model input (TCAV's concept examples and random pool, the
    probes' concept inputs), read a slice at a time (``x[start:stop]``) so a pass over them holds one batch.
    ``fingerprint``: the set's content, the key of a task's cache; ``field``: the spec field naming the set."""

    uri: str
    base_dir: str
    fingerprint: str
    positions: tuple[int, ...]
    input_spec: InputSpec
    seed: int
    field: str

    def __len__(self) -> int:
        return len(self.positions)

    @functools.cached_property
    def concepts(self):
        """The concept set, read once per process (its index is parsed once, not once per slice)."""
        return load_concepts(self.uri, Path(self.base_dir), self.seed, self.field)

    def __getitem__(self, rows: slice) -> np.ndarray:
        return concept_images(self.concepts, list(self.positions[rows]), self.input_spec)


@dataclass(frozen=True)
class ConceptData:
    """A TCAV concept given as a data URI of its own (a folder of images, .npy/.npz, builtin:): its first samples
    are the examples. ``fingerprint``: its content, the key of the cached read."""

    uri: str
    fingerprint: str


def concept_images(concepts, positions: list[int], input_spec: InputSpec) -> np.ndarray:
    """The concept set's images at ``positions`` as model input."""
    images = concepts.images_at(positions)
    samples = Samples(ids=[str(p) for p in positions], x=images, labels=None, masks=None, class_names=None)
    return to_model_input(samples, tuple(input_spec.shape), tuple(input_spec.range), input_spec.mean, input_spec.std)


def model_inputs(data_uri: str, base_dir: Path, data_sha256: str, seed: int, input_spec: InputSpec) -> ModelInputs:
    """Every sample, read and converted a chunk at a time into a file of the ``model-inputs`` cache: the run's one
    read of the whole data set, and none when the same data was converted the same way before (``data_sha256``:
    its content)."""
    folder = cache_dir("model-inputs")
    key = _inputs_key(data_sha256, seed, input_spec)
    cached = _cached_inputs(folder, key)
    if cached is not None:
        return cached
    try:
        ids, chunks = sample_chunks(data_uri, base_dir, seed, BATCH_ROWS)
    except DataError as exc:
        raise SpecError(str(exc)) from None
    if len(ids) == 0:
        raise SpecError(f"data: '{data_uri}' holds no samples; give at least one")
    first = {}
    labels = []

    def converted():
        for chunk in chunks:
            first.setdefault("samples", chunk)
            labels.append(chunk.labels)
            yield _converted(chunk, ids, data_uri, input_spec)

    folder.mkdir(parents=True, exist_ok=True)
    try:
        x = write_sample_file(folder / f"{key}.npy", converted(), len(ids))
    except DataError as exc:
        raise SpecError(str(exc)) from None
    head = first["samples"]
    inputs = ModelInputs(
        ids,
        x,
        None if labels[0] is None else np.concatenate(labels),
        input_spec.class_names or head.class_names,
        head.feature_names,
    )
    record = {
        "sha256": x.sha256,
        "ids": ids,
        "labels": None if inputs.labels is None else inputs.labels.tolist(),
        "class_names": inputs.class_names,
        "feature_names": inputs.feature_names,
    }
    write_atomically(folder / f"{key}.json", lambda partial: partial.write_text(json.dumps(record)))
    return inputs


def _inputs_key(data_sha256: str, seed: int, input_spec: InputSpec) -> str:
    """The data's content, the seed, the conversion asked for and the code that converts."""
    digest = hashlib.sha256(json.dumps([data_sha256, seed, input_spec.model_dump(mode="json")]).encode())
    for source in (datasets, sample_readers, normalization, sample_file):
        digest.update(Path(source.__file__).read_bytes())
    return digest.hexdigest()


def _cached_inputs(folder: Path, key: str) -> ModelInputs | None:
    """The inputs converted before under ``key``; None when absent or unreadable (then converted again)."""
    try:
        record = json.loads((folder / f"{key}.json").read_text())
        x = open_sample_file(folder / f"{key}.npy", record["sha256"])
    except (OSError, ValueError, KeyError):
        return None
    if len(x) != len(record["ids"]):
        return None
    labels = None if record["labels"] is None else np.asarray(record["labels"], dtype=np.int64)
    return ModelInputs(record["ids"], x, labels, record["class_names"], record["feature_names"])


def inputs_probe(data_uri: str, base_dir: Path, seed: int, input_spec: InputSpec, count: int) -> InputsProbe:
    """The first ``count`` samples converted, and every sample's id; only those samples are decoded."""
    try:
        preview = preview_samples(data_uri, base_dir, seed, count)
    except DataError as exc:
        raise SpecError(str(exc)) from None
    x = _converted(preview.head, preview.ids, data_uri, input_spec)
    return InputsProbe(
        preview.ids,
        x,
        input_spec.class_names or preview.head.class_names,
        preview.head.labels is not None,
        preview.head.feature_names,
    )


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


def load_concepts(uri: str, base_dir: Path, seed: int, field: str = "ops.dissection.concepts"):
    """The concept set the spec's ``field`` names (a builtin one is written on first use); a broken or empty one is
    bad input."""
    from interp_ops.concepts import ConceptDataError, resolve_concepts

    try:
        concepts = resolve_concepts(uri, base_dir, seed)
        if len(concepts) == 0:
            raise ConceptDataError(f"'{uri}' holds no images; give a Broden folder with images, or builtin:concepts")
        return concepts
    except (ConceptDataError, OSError) as exc:
        raise concepts_error(exc, field) from None


def concepts_error(exc: Exception, field: str = "ops.dissection.concepts") -> SpecError:
    """Broken concept data is bad input (exit 2), named as the spec names it."""
    return SpecError(f"{field}: {str(exc).removeprefix('concepts: ')}")
