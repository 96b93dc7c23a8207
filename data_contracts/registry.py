"""Every report table and threshold. Adding a table: a new module here plus its name below."""

from dataclasses import replace
from importlib import import_module

from data_contracts._core import TableContract, Threshold

_TABLE_MODULES = (
    "audit_runs",
    "onnx_parity",
    "predictions",
    "lime_explanations",
    "lime_attributions",
    "sanity_checks",
    "actmax_units",
    "actmax_exemplars",
    "dissection_units",
    "dissection_tally",
    "dissection_summary",
    "ablation_results",
    "tcav_scores",
    "probe_results",
    "contract_results",
    "reviews",
    "model_cards",
    "version_diffs",
    "gate_results",
)

_modules = [import_module(f"data_contracts.{name}") for name in _TABLE_MODULES]

TABLES: dict[str, TableContract] = {m.CONTRACT.name: m.CONTRACT for m in _modules}
# a threshold may take the values its column can hold: the column's range in its table's contract
THRESHOLDS: dict[str, Threshold] = {
    t.key: replace(t, allowed=TABLES[t.table].ranges.get(t.column, (None, None)))
    for m in _modules
    for t in m.THRESHOLDS
}
