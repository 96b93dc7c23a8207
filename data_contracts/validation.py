"""Checking report tables against their contracts with Great Expectations."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from data_contracts.registry import TABLES, THRESHOLDS

_PARTIAL_UNEXPECTED = 5
_MAX_OBSERVED_CHARS = 200
_EXTREMES = {"expect_column_max_to_be_between": "max", "expect_column_min_to_be_between": "min"}


def validate_tables(tables: dict[str, pa.Table], thresholds: dict[str, float]) -> list[dict]:
    """One row per expectation (each table's suite, then the thresholds that apply to it), in
    table order as given and suite order within a table. Everything runs in one ephemeral GX
    context. A threshold whose table is not among `tables` is not checked."""
    unknown = sorted(set(thresholds).difference(THRESHOLDS))
    if unknown:
        raise KeyError(f"unknown contract keys {unknown}; known keys: {sorted(THRESHOLDS)}")
    unknown = sorted(set(tables).difference(TABLES))
    if unknown:
        raise KeyError(f"unknown tables {unknown}; known tables: {sorted(TABLES)}")

    from data_contracts._gx import ephemeral_context, gx

    source = ephemeral_context().data_sources.add_pandas("interp_audit")
    rows = []
    for name, table in tables.items():
        expectations = TABLES[name].expectations() + [
            threshold.expectation(float(thresholds[key]))
            for key, threshold in THRESHOLDS.items()
            if threshold.table == name and key in thresholds
        ]
        # Nullable int64 columns would otherwise come out as float64 and fail their type check.
        frame = table.to_pandas(integer_object_nulls=True)
        batch = (
            source.add_dataframe_asset(name)
            .add_batch_definition_whole_dataframe(name)
            .get_batch(batch_parameters={"dataframe": frame})
        )
        result = batch.validate(
            gx.ExpectationSuite(name=name, expectations=expectations),
            result_format={
                "result_format": "SUMMARY",
                "partial_unexpected_count": _PARTIAL_UNEXPECTED,
            },
        )
        # GX reports expectations whose metrics raised first, so restore the suite order.
        order: dict[tuple[str, str], int] = {}
        for index, expectation in enumerate(expectations):
            config = expectation.configuration
            order.setdefault((config.type, _details(config.kwargs)), index)
        table_rows = [_row(name, r) for r in result.results]
        table_rows.sort(key=lambda row: order[(row["expectation"], row["details"])])
        rows.extend(table_rows)
    return rows


def _details(kwargs: dict) -> str:
    return json.dumps({k: v for k, v in kwargs.items() if k != "batch_id"}, sort_keys=True, default=str)


def _row(table_name: str, result) -> dict:
    config = result.expectation_config
    return {
        "table_name": table_name,
        "expectation": config.type,
        "column": config.kwargs.get("column"),
        "success": bool(result.success),
        "observed_value": _observed(result),
        "details": _details(config.kwargs),
    }


def _observed(result) -> str | None:
    """A short, human-readable summary of what GX saw."""
    error = _error(result.exception_info or {})
    if error is not None:
        return _clip(f"error: {error}")
    kind = result.expectation_config.type
    summary = result.result
    if kind == "expect_table_columns_to_match_set":
        mismatched = (summary.get("details") or {}).get("mismatched") or {}
        return _clip("; ".join(f"{k}: {v}" for k, v in sorted(mismatched.items()))) or None
    if kind in _EXTREMES:
        value = summary.get("observed_value")
        return "no values" if value is None else f"{_EXTREMES[kind]}={_plain(value)}"
    if "observed_value" in summary:
        return _clip(str(_plain(summary["observed_value"])))
    count = summary.get("unexpected_count")
    if not count:
        return None
    if kind == "expect_column_values_to_not_be_null":
        return f"{count} null"
    sample = [_plain(v) for v in summary.get("partial_unexpected_list", [])]
    return _clip(f"{count} unexpected: {sample}")


def _error(info: dict) -> str | None:
    """GX nests exception info under metric ids when a metric (e.g. on a missing column) fails."""
    for entry in (info, *(v for v in info.values() if isinstance(v, dict))):
        if entry.get("raised_exception"):
            return str(entry.get("exception_message") or "exception").splitlines()[0]
    return None


def _plain(value):
    """Python scalars with floats at 6 significant digits, so summaries read `3.1e-07`."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return float(f"{value:.6g}")
    return value


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_OBSERVED_CHARS else text[: _MAX_OBSERVED_CHARS - 1] + "…"
