"""Reading a spec: strict YAML (no repeated keys), validation into an ``AuditSpec``, and the text and hash that
identify it."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from interp_audit.errors import SpecError
from interp_audit.spec.audit import AuditSpec
from interp_audit.spec.messages import format_validation_error
from interp_audit.spec.model import MlflowModelSpec


class LoadedSpec(BaseModel):
    """A validated spec with what is needed to reproduce it: its text, hash and folder."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    spec: AuditSpec
    text: str
    sha256: str
    base_dir: Path


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A key given twice in one mapping."""


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error: PyYAML silently keeps the
    last one, so a spec with two `seed:` lines would audit with a seed its reader may never notice."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *defaults` merges keys that the mapping may override: not a repetition
                key = self.construct_object(key_node, deep=True)
                try:
                    line = first_line.setdefault(key, key_node.start_mark.line)
                except TypeError:
                    continue  # an unhashable key: SafeLoader reports it
                if line != key_node.start_mark.line:
                    raise DuplicateKeyError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"key {key!r} is given twice (first at line {line + 1})",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep)


def parse_spec(text: str, base_dir: Path, source: str = "<spec>") -> LoadedSpec:
    try:
        raw = yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader: builds plain data, never objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        fix = "keep one of them" if isinstance(exc, DuplicateKeyError) else "fix the syntax and retry"
        raise SpecError([f"{source}: invalid YAML{where}: {problem}; {fix}"]) from None
    if not isinstance(raw, dict):
        raise SpecError(
            [f"{source}: the spec must be a YAML mapping with keys name, model, data, ... (got {type(raw).__name__})"]
        )
    try:
        spec = AuditSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc)) from None
    return LoadedSpec(spec=spec, text=text, sha256=hashlib.sha256(text.encode()).hexdigest(), base_dir=base_dir)


def load_spec(path: str | Path) -> LoadedSpec:
    path = Path(path)
    if not path.is_file():
        raise SpecError([f"{path}: spec file not found; give the path to an audit spec YAML file"])
    return parse_spec(path.read_text(), path.resolve().parent, source=str(path))


def with_model_version(loaded: LoadedSpec, version: str) -> LoadedSpec:
    """The same spec pinned to another version of its registered model; its text and hash stay the spec's, so
    every version audited from one spec shares the spec's identity."""
    model = loaded.spec.model
    if not isinstance(model, MlflowModelSpec):
        raise SpecError(
            f"version {version!r} given for a {model.source} model; only registry models "
            "(model.source: mlflow) have versions to choose from"
        )
    try:
        pinned = MlflowModelSpec.model_validate({**model.model_dump(), "version": version})
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc)) from None
    return loaded.model_copy(update={"spec": loaded.spec.model_copy(update={"model": pinned})})


def json_schema() -> dict[str, Any]:
    return AuditSpec.model_json_schema()
