"""pydantic's validation errors as the spec's users read them: ``path: problem (got value)``, one line per path,
with the keys the user wrote and none of pydantic's internal names for union branches."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from interp_audit.spec.gates import gate_metrics
from interp_audit.spec.ops import OpsSpec


def _format_loc(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif (
            part in ("torch", "onnx", "sklearn", "mlflow")
            and path == "model"
            or isinstance(part, str)
            and path.endswith("]")
            and path.startswith("gates[")
            and "." in part
            and "[" not in part
        ):
            continue  # discriminator tag, not a key the user wrote
        elif isinstance(part, str) and (part.startswith("function-") or "[" in part or part in UNION_BRANCHES):
            continue  # which branch of a union pydantic tried: not a key the user wrote
        else:
            path += ("." if path else "") + str(part)
    return path or TOP_LEVEL


TOP_LEVEL = "(top level)"


UNION_BRANCHES = {"int", "float", "str", "bool", "list", "dict", "none", "TokenLayerSpec"}
_FRIENDLY = {
    "int_from_float": "must be an integer",
    "int_parsing": "must be an integer",
    "int_type": "must be an integer",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "finite_number": "must be a finite number, not NaN or infinity",
    "string_type": "must be a string",
    "bool_parsing": "must be true or false",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "missing": "is required",
    "extra_forbidden": "unknown key; remove it or check its spelling",
    "union_tag_invalid": "must be one of: torch, onnx, sklearn, mlflow",
    "union_tag_not_found": "is required (one of: torch, onnx, sklearn, mlflow)",
    "literal_error": "must be one of the allowed values",
}


def _other_branch_explains(item: dict, errors: list[dict]) -> bool:
    """A mapping given where a name or a mapping may go (``model.layers``): the name branch's "must be a string"
    says nothing the mapping branch's own errors do not say better."""
    loc = tuple(item["loc"])
    return (
        item["type"] == "string_type"
        and isinstance(item.get("input"), dict)
        and any(tuple(other["loc"])[: len(loc) - 1] == loc[:-1] and other is not item for other in errors)
    )


def format_validation_error(error: ValidationError) -> list[str]:
    """One line per offending path; the alternatives of a union are joined into one line."""
    by_path: dict[str, list[str]] = {}
    got_by_path: dict[str, Any] = {}
    errors = error.errors()
    for item in errors:
        loc = list(item["loc"])
        kind = item["type"]
        got = item.get("input")
        if _other_branch_explains(item, errors):
            continue
        if kind in ("union_tag_invalid", "union_tag_not_found"):
            ctx = item.get("ctx") or {}
            loc.append(str(ctx.get("discriminator", "source")).strip("'"))
            got = ctx.get("tag")
        where = _format_loc(tuple(loc))
        if kind == "value_error":
            text = str(item["msg"]).removeprefix("Value error, ")
            got = None  # our own messages already say what they got
        elif kind == "literal_error":
            text = f"must be {item['ctx']['expected']}"
        elif kind in ("union_tag_invalid", "union_tag_not_found") and loc[-1] == "metric":
            text = (
                "must be" if kind == "union_tag_invalid" else "is required:"
            ) + f" one of {', '.join(gate_metrics())}"
        else:
            text = _FRIENDLY.get(kind, item["msg"])
        if kind == "extra_forbidden" and where.startswith("ops.") and where.count(".") == 1:
            text = "unknown method; the methods this version supports are: " + ", ".join(OpsSpec.model_fields)
        if kind in ("missing", "extra_forbidden", "union_tag_not_found"):
            got = None
        by_path.setdefault(where, [])
        if text not in by_path[where]:
            by_path[where].append(text)
        if got is not None:
            got_by_path.setdefault(where, got)
    # a whole-spec check names its own path in its message, so it gets no "(top level): " prefix
    return [
        ("" if where == TOP_LEVEL and where not in got_by_path else f"{where}: ")
        + " or ".join(texts)
        + (f" (got {got_by_path[where]!r})" if where in got_by_path else "")
        for where, texts in by_path.items()
    ]
