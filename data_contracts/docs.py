"""Markdown documentation of the report tables, generated from the contracts themselves."""

from data_contracts._core import TableContract, is_required
from data_contracts.registry import TABLES, THRESHOLDS


def _range(lo: float | None, hi: float | None) -> str:
    if lo is None:
        return f"<= {hi}"
    if hi is None:
        return f">= {lo}"
    return f"[{lo}, {hi}]"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table_section(contract: TableContract) -> list[str]:
    key = ", ".join(f"`{c}`" for c in contract.unique_key)
    lines = [
        f"## `{contract.name}`",
        "",
        contract.description,
        "",
        f"Key (not null, unique together): {key}",
        "",
        "| column | type | nullable | rule | description |",
        "|---|---|---|---|---|",
    ]
    for field in contract.schema:
        rules = []
        if field.name in contract.allowed_values:
            allowed = contract.allowed_values[field.name]
            rules.append("one of " + ", ".join(f"`{v}`" for v in allowed))
        if field.name in contract.ranges:
            rules.append(_range(*contract.ranges[field.name]))
        nullable = "no" if is_required(field) or field.name in contract.unique_key else "yes"
        doc = field.metadata[b"doc"].decode()
        lines.append(
            f"| `{field.name}` | `{_cell(str(field.type))}` | {nullable} | {_cell('; '.join(rules))} | {_cell(doc)} |"
        )
    thresholds = [t for t in THRESHOLDS.values() if t.table == contract.name]
    if thresholds:
        lines += [
            "",
            "Thresholds a spec may set under `contracts:`:",
            "",
            "| key | column | check | allowed | description |",
            "|---|---|---|---|---|",
        ]
        for t in thresholds:
            check = "every value <= threshold" if t.bound == "max" else "every value >= threshold"
            lines.append(f"| `{t.key}` | `{t.column}` | {check} | {t.allowed_text()} | {_cell(t.doc)} |")
    return lines


def table_docs_markdown() -> str:
    """Every table's columns, types, docs, key, rules and thresholds, as one Markdown page."""
    lines = [
        "# Report tables",
        "",
        "<!-- Generated from data_contracts by `python -m data_contracts > docs/tables.md`; do not edit by hand. -->",
        "",
        "Each table is stored as Parquet, hive-partitioned by `model=<name>/version=<version>/`; "
        "the partition columns `model` and `version` are not part of the schemas below. "
        "Every run's tables are validated against these contracts (exact column set, scalar "
        "column types, not-null, rules, unique key, and the thresholds its spec sets); the "
        "outcome is the `contract_results` table.",
    ]
    for contract in TABLES.values():
        lines += ["", *_table_section(contract)]
    return "\n".join([*lines, "", JSON_OUTPUT]) + "\n"


JSON_OUTPUT = """## JSON output of the reading commands

`--format json` prints to stdout (progress and warnings go to stderr). Keys are the columns above; times are
ISO 8601 in UTC; a missing number is `null`. `--format csv` (row listings only) has the same columns.

| command | prints |
|---|---|
| `report list` | one object per run: the `audit_runs` columns but `spec_text`, and the partition columns `model`, `version` |
| `report show RUN` | `run` (the `audit_runs` row), `onnx_parity`, `contract_results`, `dissection_summary`, `ablation_results`, `sanity_checks`, `gate_results`, `version_diffs` (lists of the run's rows), `reviews` (its rows oldest first, each with `matches_tables`), `tables_sha256` (the run's tables now), `table_rows` (rows per table) |
| `report diff MODEL OLD NEW` | `model`, `old_version`, `new_version`, `headline`, `version_diffs` (the pair's rows) |
| `report query SQL` | one object per result row, keyed by the query's column names |
| `verdict MODEL VERSION` | the verdict, as [`docs/verdict.schema.json`](verdict.schema.json) specifies (`schema_version` 1) |"""
