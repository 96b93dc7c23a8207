"""The value types every block of the spec is built from: safe names, numbers that refuse true/false, NaN and
infinity, and the strict base model that refuses unknown keys."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
FACTORY_REF = re.compile(r"^(?P<target>[^:]+):(?P<attr>[A-Za-z_][A-Za-z0-9_.]*)$")


def _safe_name(value: Any) -> str:
    """Names become report-store directory names, so they may not escape it."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError(f"must be a string (got {value!r})")
    if ".." in value or not SAFE_NAME.match(value):
        raise ValueError(
            f"must be a plain name of letters, digits, '.', '_' or '-' without '..' or '/' "
            f"(got {value!r}); such names become directories in the report store"
        )
    return value


SafeName = Annotated[str, BeforeValidator(_safe_name)]


def refuse_unless(condition, message: str):
    """A validator that refuses a value for which ``condition`` is false, saying what it got."""

    def check_value(value):
        if not condition(value):
            raise ValueError(f"{message} (got {value!r})")
        return value

    return AfterValidator(check_value)


def _not_bool(kind: str):
    """pydantic reads true/false as 1/0 where a number is expected; in a spec that is a typo, never a number."""

    def check_value(value):
        if isinstance(value, bool):
            raise ValueError(f"must be {kind}, not {str(value).lower()}")
        return value

    return BeforeValidator(check_value)


# Every integer and float of the spec is one of these; NaN and infinity are refused by StrictModel's config.
Int = Annotated[int, _not_bool("an integer")]
Float = Annotated[float, _not_bool("a number")]
PositiveInt = Annotated[
    Int, refuse_unless(lambda v: v > 0, "must be a positive integer"), Field(json_schema_extra={"minimum": 1})
]
NonNegativeInt = Annotated[
    Int, refuse_unless(lambda v: v >= 0, "must be 0 or more"), Field(json_schema_extra={"minimum": 0})
]
PositiveFloat = Annotated[
    Float, refuse_unless(lambda v: v > 0, "must be > 0"), Field(json_schema_extra={"exclusiveMinimum": 0})
]
Fraction = Annotated[
    Float,
    refuse_unless(lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    Field(json_schema_extra={"minimum": 0, "maximum": 1}),
]
OpenFraction = Annotated[
    Float,
    refuse_unless(lambda v: 0 < v < 1, "must be in (0, 1), 0 and 1 excluded"),
    Field(json_schema_extra={"exclusiveMinimum": 0, "exclusiveMaximum": 1}),
]
# The seed reaches numpy (any size >= 0), torch.manual_seed (up to 2**64 - 1), sums like seed + run, the int64
# `seed` column of audit_runs, and builtin:concepts' seed (0 to 2**32 - 1, numpy's legacy range): the smallest wins.
MAX_SEED = 2**32 - 1
Seed = Annotated[
    Int,
    refuse_unless(lambda v: 0 <= v <= MAX_SEED, f"must be a whole number from 0 to {MAX_SEED}"),
    Field(json_schema_extra={"minimum": 0, "maximum": MAX_SEED}),
]


class StrictModel(BaseModel):
    """Unknown keys are typos, and NaN or infinity in any float (lists included) is never a usable setting."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
