"""Cache keys from content: the same task inputs give the same key in every process and on every machine.

``canonical`` turns a task's parameters into plain JSON content: pydantic models by their JSON dump, dataclasses
by their fields, numpy arrays and bytes by their sha256 (with dtype and shape), sets sorted, dict keys sorted.
A ref to a blob on the report store (``interp_audit.blobs``) keys as the bytes or the array it stands for, so a
task handed refs instead of values keeps its key.
Nothing is ever pickled (a pickle of a pydantic model or of a set changes with ``PYTHONHASHSEED``), and a value
of a type it does not know is a ``TypeError`` that names where in the parameters it sits.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path, PurePath
from typing import Any

import numpy as np
from pydantic import BaseModel

from interp_audit.blobs import ArrayRef, BlobRef, array_sha256
from interp_audit.intake import ModelRef
from interp_audit.spec import FACTORY_REF
from interp_ops.sample_file import SampleFile


def sha256_bytes(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _dumps(content: Any) -> str:
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _float(value: float) -> Any:
    # JSON has no NaN or infinities; their repr is stable and cannot collide with a real string (strings stay str)
    return value if math.isfinite(value) else {"__float__": repr(value)}


def _array(value: np.ndarray, where: str) -> dict:
    if value.dtype.hasobject:  # the raw bytes of an object array are pointers: hash its items instead
        return {
            "__ndarray__": {"dtype": "object", "shape": list(value.shape), "items": canonical(value.tolist(), where)}
        }
    return _array_content(value.dtype.str, value.shape, array_sha256(value))


def _array_content(dtype: str, shape: tuple[int, ...], sha256: str) -> dict:
    return {"__ndarray__": {"dtype": dtype, "shape": list(shape), "sha256": sha256}}


def _bytes_content(size: int, sha256: str) -> dict:
    return {"__bytes__": {"size": size, "sha256": sha256}}


def _model_ref(ref: ModelRef, where: str) -> dict:
    """The ref's fields (the weights' sha256 among them), plus the sha256 of a factory given as a .py file: the
    module's code decides what the weights are loaded into."""
    content = _fields(ref, where)
    match = FACTORY_REF.match(ref.factory or "")
    if match and match["target"].endswith(".py"):
        file = (Path(ref.base_dir) / match["target"]).resolve()
        content["factory_sha256"] = sha256_bytes(file.read_bytes()) if file.is_file() else None
    return content


def _fields(value: Any, where: str) -> dict:
    return {
        field.name: canonical(getattr(value, field.name), f"{where}.{field.name}")
        for field in dataclasses.fields(value)
    }


def _type_name(value: Any) -> str:
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}"


def canonical(value: Any, where: str = "value") -> Any:
    """``value`` as JSON content that depends only on what it holds; ``where`` names it in errors."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.generic):  # numpy scalars (np.float64 too, a float subclass): dtype and value
        return {"__npscalar__": {"dtype": value.dtype.str, "value": canonical(value.item(), where)}}
    if isinstance(value, int) and not isinstance(value, enum.Enum):
        return int(value)
    if isinstance(value, float):
        return _float(float(value))
    if isinstance(value, np.ndarray):
        return _array(value, where)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _bytes_content(len(value), sha256_bytes(value))
    if isinstance(value, BlobRef):  # before dataclasses: a ref keys as its content, wherever it is stored
        return _bytes_content(value.size, value.sha256)
    if isinstance(value, (ArrayRef, SampleFile)):  # keyed as the array they hold, not where it is
        return _array_content(value.dtype, value.shape, value.sha256)
    if isinstance(value, BaseModel):
        return {"__type__": _type_name(value), "fields": value.model_dump(mode="json")}
    if isinstance(value, ModelRef):
        return {"__type__": _type_name(value), "fields": _model_ref(value, where)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"__type__": _type_name(value), "fields": _fields(value, where)}
    if isinstance(value, enum.Enum):
        return {"__enum__": _type_name(value), "value": canonical(value.value, where)}
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        if all(isinstance(key, str) for key in value):
            return {key: canonical(item, f"{where}[{key!r}]") for key, item in value.items()}
        items = [[canonical(key, f"{where} key"), canonical(item, f"{where}[{key!r}]")] for key, item in value.items()]
        return {"__items__": sorted(items, key=_dumps)}
    if isinstance(value, (list, tuple)):
        return [canonical(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        return {"__set__": sorted((canonical(item, f"{where} item") for item in value), key=_dumps)}
    raise TypeError(
        f"no stable cache key for {where}: {_type_name(value)} is not a kind of value cache keys know "
        "(JSON scalars, lists, dicts, sets, bytes, paths, numpy arrays, pydantic models, dataclasses); "
        "refusing to fall back to a pickle, whose bytes change from process to process"
    )


def canonical_json(
    parameters: Mapping[str, Any], extra: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None
) -> str:
    """Canonical JSON of a task's parameters (a task takes exactly what it reads); ``extra`` adds content they
    only point at (e.g. the fingerprint of files behind a path)."""
    content = {"parameters": canonical(dict(parameters), "parameters")}
    if extra is not None:
        content["extra"] = canonical(dict(extra(parameters)), "extra")
    return _dumps(content)


def content_key(
    parameters: Mapping[str, Any], extra: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None
) -> str:
    """sha256 of ``canonical_json``: the content part of a task's cache key."""
    return hashlib.sha256(canonical_json(parameters, extra).encode()).hexdigest()
