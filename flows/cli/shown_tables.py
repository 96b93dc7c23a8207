"""The tables ``interp-audit report show`` prints for a run: one declaration each (the stored table it reads, how
its rows are summarised, its columns and how each cell is written), so a new audit method adds an entry here, not
another block of printing code."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from rich.table import Table

from interp_audit.readings import similarity_by_step, versus_random

Cell = Callable[[Any], str]  # a row (a named tuple of the summarised frame) -> its text in one column


def number(column: str, spec: str) -> Cell:
    """The column's value in a format spec (".2f", ".2e"); "-" where it is missing."""
    return lambda row: "-" if pd.isna(getattr(row, column)) else format(getattr(row, column), spec)


def text(column: str) -> Cell:
    return lambda row: str(getattr(row, column))


def spread(mean: str, std: str) -> Cell:
    """A mean with its standard deviation, "-" where the mean is missing."""
    return lambda row: "-" if pd.isna(getattr(row, mean)) else f"{getattr(row, mean):.2f} ± {getattr(row, std):.2f}"


@dataclass(frozen=True)
class ShownTable:
    source: str  # the stored table (docs/tables.md)
    title: str
    cells: dict[str, Cell]  # column header -> how a row's cell is written
    rows: Callable[[pd.DataFrame], pd.DataFrame] = field(default=lambda frame: frame)  # summarise or sort first

    def render(self, frame: pd.DataFrame) -> Table | None:
        """The rich table of the run's rows of ``source``; None when the run has none."""
        rows = self.rows(frame) if len(frame) else frame
        if not len(rows):
            return None
        table = Table(*self.cells, title=self.title)
        for row in rows.itertuples():
            table.add_row(*(cell(row) for cell in self.cells.values()))
        return table


def _renders_per_layer(units: pd.DataFrame) -> pd.DataFrame:
    return (
        units.assign(beating=units.final_activation >= units.dataset_max)
        .groupby("layer", sort=True)
        .agg(
            renders=("ratio", "size"),
            beating=("beating", "sum"),
            ratio=("ratio", "mean"),
            robustness=("robustness", "mean"),
        )
        .reset_index()
    )


PARITY = ShownTable(
    "onnx_parity",
    "ONNX parity",
    {
        "output": text("output"),
        "shape": lambda row: "x".join(map(str, row.shape)),
        "max abs diff": number("max_abs_diff", ".2e"),
        "max rel diff": number("max_rel_diff", ".2e"),
        "argmax agreement": number("argmax_agreement", ".3f"),
    },
)

METHODS = (
    ShownTable(
        "dissection_summary",
        "network dissection: detectors per category (random baseline)",
        {
            "layer": text("layer"),
            "category": text("category"),
            "detectors": text("detectors"),
            "unique concepts": text("unique_concepts"),
            "beat the baseline": number("detectors_above_baseline", ".0f"),
            "baseline detectors": number("baseline_detectors", ".0f"),
        },
    ),
    ShownTable(
        "sanity_checks",
        "LIME sanity check",
        {
            "step": text("step"),
            "re-drawn through": text("randomised_through"),
            "similarity": number("mean", ".2f"),
            "highest": number("max", ".2f"),
            "of |weights|": number("mean_abs", ".2f"),
        },
        similarity_by_step,
    ),
    ShownTable(
        "actmax_units",
        "activation maximization (ratio: render activation / dataset max)",
        {
            "layer": text("layer"),
            "renders": text("renders"),
            "beat every image": text("beating"),
            "mean ratio": number("ratio", ".2f"),
            "mean robustness": number("robustness", ".2f"),
        },
        _renders_per_layer,
    ),
    ShownTable(
        "actmax_units",
        "activation maximization sanity check: against a copy with every weight re-drawn",
        {
            "layer": text("layer"),
            "beat the copy's ratio": lambda row: f"{row.beating} of {row.compared}",
            "mean ratio": number("ratio", ".2f"),
            "copy's ratio": number("random_ratio", ".2f"),
            "mean robustness": number("robustness", ".2f"),
            "copy's robustness": number("random_robustness", ".2f"),
        },
        versus_random,
    ),
    ShownTable(
        "ablation_results",
        "unit ablation: each class's K most important units zeroed (balanced accuracy; K random units)",
        {
            "layer": text("layer"),
            "class": text("class_name"),
            "K": text("k"),
            "units zeroed": lambda row: ", ".join(map(str, row.units)),
            "accuracy": lambda row: f"{row.accuracy_before:.2f} -> {row.accuracy_after:.2f}",
            "drop": number("accuracy_drop", ".2f"),
            "random drop": spread("random_drop_mean", "random_drop_std"),
        },
    ),
    ShownTable(
        "tcav_scores",
        "TCAV: share of the class's inputs whose logit rises along the concept (0.5: none preferred)",
        {
            "layer": text("layer"),
            "concept": text("concept"),
            "class": text("class_name"),
            "score": spread("score_mean", "score_std"),
            "random sets' null": spread("random_score_mean", "random_score_std"),
            "p": number("p_value", ".2g"),
            "significant": lambda row: "[bold]yes[/]" if row.significant else "no",
            "CAV accuracy": number("cav_accuracy_mean", ".2f"),
        },
        lambda scores: scores.sort_values(["layer", "concept", "class_index"]),
    ),
    ShownTable(
        "probe_results",
        "linear probes: how readable each attribute is per layer (selectivity = accuracy - control task's)",
        {
            "attribute": text("attribute"),
            "layer": text("layer"),
            "accuracy": spread("accuracy_mean", "accuracy_std"),
            "control": number("control_accuracy", ".2f"),
            "chance": number("chance", ".2f"),
            "selectivity": number("selectivity", ".2f"),
            "inputs": lambda row: f"{row.samples} ({row.inputs})",
        },
        lambda probes: probes.sort_values(["attribute", "depth"]),
    ),
)
