"""The contract types shared by every table module, and `conform`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import pandas as pd
import pyarrow as pa


class ContractSchemaError(ValueError):
    """Data that cannot be given its table's schema (wrong columns, or an unsafe cast)."""


def column(name: str, type_: pa.DataType, doc: str, *, nullable: bool = False) -> pa.Field:
    """A schema field carrying its documentation; columns are required unless said otherwise.

    Arrow fields stay nullable and "required" is a contract rule (metadata ``required``): a run whose
    rows break it must still be written, marked ``failed_contracts``, so that reviewers can see why.
    """
    metadata = {b"doc": doc.encode(), b"required": b"false" if nullable else b"true"}
    return pa.field(name, type_, nullable=True, metadata=metadata)


def is_required(field: pa.Field) -> bool:
    return (field.metadata or {}).get(b"required") == b"true"


RUN_ID = column("run_id", pa.string(), "Id of the audit run; every table of the run carries it.")
"""The first column of every table."""

# GX `type_` names that match what `Table.to_pandas(integer_object_nulls=True)` yields under
# pandas 3: `str` columns come out as StringDtype (whose `.type` is `str`), int64 as int64 or,
# with nulls, object holding Python ints. Types not listed (lists above all: object columns of
# ndarrays, which no GX type name matches) get no type expectation.
_GX_TYPE_NAMES = {
    pa.string(): "str",
    pa.large_string(): "str",
    pa.int64(): "int",
    pa.float64(): "float",
    pa.bool_(): "bool",
}


def _gx_type_name(type_: pa.DataType) -> str | None:
    if pa.types.is_timestamp(type_):
        return "Timestamp"
    return _GX_TYPE_NAMES.get(type_)


@dataclass(frozen=True)
class TableContract:
    """One report table: its Arrow schema and the rules its rows must satisfy."""

    name: str
    description: str
    schema: pa.Schema
    unique_key: tuple[str, ...]
    allowed_values: dict[str, tuple]
    ranges: dict[str, tuple[float | None, float | None]]

    def __post_init__(self) -> None:
        """Reject a malformed contract at import time rather than at the first audit run."""
        names = self.schema.names
        undocumented = [f.name for f in self.schema if not (f.metadata or {}).get(b"doc")]
        unknown = sorted({*self.unique_key, *self.allowed_values, *self.ranges}.difference(names))
        problems = []
        if names[:1] != ["run_id"] or self.unique_key[:1] != ("run_id",):
            problems.append("the schema and the unique key must start with run_id")
        if undocumented:
            problems.append(f"columns without a doc: {undocumented}")
        if unknown:
            problems.append(f"rules name columns not in the schema: {unknown}")
        if any(lo is None and hi is None for lo, hi in self.ranges.values()):
            problems.append("a range needs at least one bound")
        if problems:
            raise ValueError(f"contract {self.name!r}: " + "; ".join(problems))

    def expectations(self) -> list:
        """The static GX suite: exact columns, scalar types, not-null, allowed sets, ranges, key."""
        from data_contracts._gx import gx

        expect = gx.expectations
        names = self.schema.names
        suite = [expect.ExpectTableColumnsToMatchSet(column_set=names, exact_match=True)]
        for field in self.schema:
            name = field.name
            type_name = _gx_type_name(field.type)
            if type_name is not None:
                suite.append(expect.ExpectColumnValuesToBeOfType(column=name, type_=type_name))
            if is_required(field) or name in self.unique_key:
                suite.append(expect.ExpectColumnValuesToNotBeNull(column=name))
            if name in self.allowed_values:
                suite.append(expect.ExpectColumnValuesToBeInSet(column=name, value_set=list(self.allowed_values[name])))
            if name in self.ranges:
                lo, hi = self.ranges[name]
                bounds = {k: v for k, v in (("min_value", lo), ("max_value", hi)) if v is not None}
                suite.append(expect.ExpectColumnValuesToBeBetween(column=name, **bounds))
        if len(self.unique_key) == 1:
            suite.append(expect.ExpectColumnValuesToBeUnique(column=self.unique_key[0]))
        else:
            suite.append(expect.ExpectCompoundColumnsToBeUnique(column_list=list(self.unique_key)))
        return suite


@dataclass(frozen=True)
class Threshold:
    """A spec-settable limit on one column: every value must be <= ("max") or >= ("min") it."""

    key: str
    table: str
    column: str
    bound: Literal["max", "min"]
    doc: str
    allowed: tuple[float | None, float | None] = (None, None)
    """Values a spec may set: those the column can hold (the registry takes them from the column's range), since
    a limit outside them is met by every run or by none."""

    def refusal(self, value: float) -> str | None:
        """Why ``value`` is no usable threshold, or None when it is one."""
        lo, hi = self.allowed
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or (lo is not None and value < lo)
            or (hi is not None and value > hi)
        ):
            return f"must be {self.allowed_text()} (got {value!r})"
        return None

    def allowed_text(self) -> str:
        lo, hi = self.allowed
        if lo is not None and hi is not None:
            return f"a number from {lo} to {hi}"
        if lo is not None or hi is not None:
            return f"a finite number {'>= ' if hi is None else '<= '}{lo if hi is None else hi}"
        return "a finite number"

    def expectation(self, value: float):
        """The GX check; on the column's extreme so the result reports the worst value seen.

        An empty or all-null column fails: nothing was measured, so the limit is not shown to hold.
        """
        from data_contracts._gx import gx

        if self.bound == "max":
            return gx.expectations.ExpectColumnMaxToBeBetween(column=self.column, max_value=value)
        return gx.expectations.ExpectColumnMinToBeBetween(column=self.column, min_value=value)


def _columns(table: pd.DataFrame | list[dict], names: list[str]) -> dict[str, object]:
    """Column name -> values; for rows, the union of their keys (a row lacking one gives null),
    since `Table.from_pylist` silently takes its columns from the first row only."""
    if isinstance(table, pd.DataFrame):
        return {key: table[key] for key in table.columns}
    keys = dict.fromkeys(key for row in table for key in row) if table else names
    return {key: [row.get(key) for row in table] for key in keys}


def _to_arrow(name: str, table: pa.Table | pd.DataFrame | list[dict], names: list[str]) -> pa.Table:
    """Arrow with inferred types, to be cast to the schema afterwards."""
    if isinstance(table, pa.Table):
        return table
    arrays = {}
    for key, values in _columns(table, names).items():
        try:
            arrays[key] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            raise ContractSchemaError(f"table {name!r}: column {key!r} cannot be converted to Arrow: {err}") from err
    return pa.table(arrays)


def conform_to(contract: TableContract, table: pa.Table | pd.DataFrame | list[dict]) -> pa.Table:
    """`table` with exactly the contract's schema: its column order, types (pyarrow safe casts,
    which refuse truncation and overflow), nullability flags and docs. Null values are left for
    the GX suite to report."""
    schema = contract.schema
    data = _to_arrow(contract.name, table, schema.names)
    missing = [n for n in schema.names if n not in data.column_names]
    extra = [n for n in data.column_names if n not in schema.names]
    if missing or extra:
        problems = [f"{what} columns {cols}" for what, cols in (("missing", missing), ("unexpected", extra)) if cols]
        raise ContractSchemaError(f"table {contract.name!r}: " + ", ".join(problems))
    arrays = []
    for field in schema:
        values = data.column(field.name)
        try:
            arrays.append(values.cast(field.type, safe=True))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
            raise ContractSchemaError(
                f"table {contract.name!r}: column {field.name!r} of type {values.type} "
                f"cannot be cast safely to {field.type}: {err}"
            ) from err
    return pa.Table.from_arrays(arrays, schema=schema)
