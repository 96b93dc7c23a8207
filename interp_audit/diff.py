"""What changed between the runs of two versions of a model: the rows of the ``version_diffs`` table.

Each method is compared only where both runs measured the same thing: LIME on the same samples and labels with
the same superpixels, dissection on the same layers (units are matched by index), activation maximization on
the units of layers both runs rendered, ablation on the same layers, classes and K, LIME's sanity check on the same
randomisation steps, TCAV on the same concepts, layers and classes, probes on the same layers and attributes. Everything here works on a run's tables as pandas frames (``RunTables``),
so the flow can diff its own tables before they are published and ``report diff`` can diff two published runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from interp_audit.readings import similarity_by_step

RunTables = Callable[[str], pd.DataFrame]
"""A run's table by name (an empty frame where the run has none)."""

LIME_LAYER = "output"  # LIME explains the model output, not a layer


def tables_of(tables: Mapping[str, object]) -> RunTables:
    """``RunTables`` over in-memory Arrow tables (the flow's, before publishing)."""

    def table(name: str) -> pd.DataFrame:
        data = tables.get(name)
        return pd.DataFrame() if data is None else data.to_pandas()

    return table


def version_diff(old: RunTables, new: RunTables) -> list[dict]:
    """Rows of ``version_diffs`` (without the run and baseline columns) for every method both runs have."""
    return [
        *lime_diff(old, new),
        *sanity_diff(old, new),
        *dissection_diff(old, new),
        *actmax_diff(old, new),
        *ablation_diff(old, new),
        *tcav_diff(old, new),
        *probes_diff(old, new),
    ]


def _row(
    method: str,
    metric: str,
    scope: str,
    layer: str,
    item: str,
    value: float,
    old_value=None,
    new_value=None,
    category: str | None = None,
) -> dict:
    return {
        "method": method,
        "metric": metric,
        "scope": scope,
        "layer": layer,
        "item": item,
        "category": category,
        "old_value": old_value,
        "new_value": new_value,
        "value": float(value),
    }


# ------------------------------------------------------------------------------------------------------ LIME


def _explained(run: RunTables) -> pd.DataFrame:
    """One row per sample and label position (the k-th label explained for the sample), with its weights."""
    explanations = run("lime_explanations")
    if explanations.empty:
        return explanations
    explanations = explanations.sort_values(["sample_id", "label"]).copy()
    explanations["position"] = explanations.groupby("sample_id").cumcount()
    attributions = run("lime_attributions")
    weights = {
        key: dict(zip(group["feature"], group["weight"])) for key, group in attributions.groupby(["sample_id", "label"])
    }
    explanations["weights"] = [
        weights.get((s, label), {}) for s, label in zip(explanations["sample_id"], explanations["label"])
    ]
    return explanations


def _same_features(old: pd.Series, new: pd.Series) -> bool:
    """Superpixel ids mean the same pixels in both runs (same segmentation); tabular features always do. An image
    explanation without its map (published before maps were kept as integers) is compared with nothing."""
    if old["segments"] is None or new["segments"] is None:
        tabular = all(row.get("overlay_png") is None for row in (old, new))
        return tabular and old["segments"] is None and new["segments"] is None
    same_shape = (old["height"], old["width"]) == (new["height"], new["width"])
    return same_shape and np.array_equal(old["segments"], new["segments"])


def attribution_shift(old: Mapping[str, float], new: Mapping[str, float]) -> float:
    """Total variation between the two |weight| distributions over the features: 0 same, 1 disjoint."""
    features = sorted(set(old) | set(new))
    p = np.abs([old.get(f, 0.0) for f in features])
    q = np.abs([new.get(f, 0.0) for f in features])
    if p.sum() == 0 or q.sum() == 0:
        return float(p.sum() != q.sum())
    return float(0.5 * np.abs(p / p.sum() - q / q.sum()).sum())


def lime_diff(old: RunTables, new: RunTables) -> list[dict]:
    """Per sample: Jaccard of the top-k features and the attribution shift; overall: their means."""
    before, after = _explained(old), _explained(new)
    if before.empty or after.empty:
        return []
    pairs = before.merge(after, on=["sample_id", "position"], suffixes=("_old", "_new"))
    rows = []
    for pair in pairs.to_dict("records"):
        old_side = pd.Series({key[:-4]: value for key, value in pair.items() if key.endswith("_old")})
        new_side = pd.Series({key[:-4]: value for key, value in pair.items() if key.endswith("_new")})
        if not _same_features(old_side, new_side):
            continue
        top_old, top_new = set(old_side["top_features"]), set(new_side["top_features"])
        jaccard = len(top_old & top_new) / len(top_old | top_new)
        item = pair["sample_id"] if pair["position"] == 0 else f"{pair['sample_id']}#{pair['position']}"
        rows.append(_row("lime", "topk_jaccard", "sample", LIME_LAYER, item, jaccard))
        rows.append(
            _row(
                "lime",
                "attribution_shift",
                "sample",
                LIME_LAYER,
                item,
                attribution_shift(old_side["weights"], new_side["weights"]),
            )
        )
    for metric in ("topk_jaccard", "attribution_shift"):
        values = [row["value"] for row in rows if row["metric"] == metric]
        if values:
            rows.append(_row("lime", metric, "overall", LIME_LAYER, "*", float(np.mean(values))))
    return rows


# ------------------------------------------------------------------------------------------------ dissection


def dissection_diff(old: RunTables, new: RunTables) -> list[dict]:
    """Detectors per concept and per category of each layer both runs dissected: counts, gained, lost."""
    before, after = old("dissection_units"), new("dissection_units")
    if before.empty or after.empty:
        return []
    columns = ["layer", "unit", "concept", "category", "is_detector"]
    units = before[columns].merge(after[columns], on=["layer", "unit"], suffixes=("_old", "_new"))
    rows = []
    for layer, group in units.groupby("layer", sort=True):
        for scope, key in (("concept", "concept"), ("category", "category")):
            detected_old = group[key + "_old"].where(group["is_detector_old"])
            detected_new = group[key + "_new"].where(group["is_detector_new"])
            categories = dict(zip(group["concept_old"], group["category_old"])) | dict(
                zip(group["concept_new"], group["category_new"])
            )
            for item in sorted(set(detected_old.dropna()) | set(detected_new.dropna())):
                count_old, count_new = int((detected_old == item).sum()), int((detected_new == item).sum())
                gained = int(((detected_new == item) & (detected_old != item)).sum())
                lost = int(((detected_old == item) & (detected_new != item)).sum())
                category = categories[item] if scope == "concept" else item
                rows += [
                    _row(
                        "dissection",
                        "detectors",
                        scope,
                        layer,
                        item,
                        count_new - count_old,
                        count_old,
                        count_new,
                        category,
                    ),
                    _row("dissection", "detectors_gained", scope, layer, item, gained, category=category),
                    _row("dissection", "detectors_lost", scope, layer, item, lost, category=category),
                ]
        total_old, total_new = int(group["is_detector_old"].sum()), int(group["is_detector_new"].sum())
        rows.append(_row("dissection", "detectors", "overall", layer, "*", total_new - total_old, total_old, total_new))
    return rows


# ------------------------------------------------------------------------------------ activation maximization


def actmax_diff(old: RunTables, new: RunTables) -> list[dict]:
    """Per unit of the layers both runs rendered: the change in the render-to-dataset ratio (first render), for the
    units that have a ratio in both runs."""
    before, after = old("actmax_units"), new("actmax_units")
    if before.empty or after.empty:
        return []
    columns = ["layer", "unit", "ratio"]
    units = before[before["render"] == 0][columns].merge(
        after[after["render"] == 0][columns], on=["layer", "unit"], suffixes=("_old", "_new")
    )
    units = units.dropna(subset=["ratio_old", "ratio_new"])  # no ratio where the data never drives the unit above 0
    rows = [
        _row(
            "activation_max",
            "ratio",
            "unit",
            unit["layer"],
            str(unit["unit"]),
            unit["ratio_new"] - unit["ratio_old"],
            unit["ratio_old"],
            unit["ratio_new"],
        )
        for unit in units.sort_values(["layer", "unit"]).to_dict("records")
    ]
    for layer, group in units.groupby("layer", sort=True):
        rows.append(
            _row(
                "activation_max",
                "ratio",
                "overall",
                layer,
                "*",
                group["ratio_new"].mean() - group["ratio_old"].mean(),
                group["ratio_old"].mean(),
                group["ratio_new"].mean(),
            )
        )
    return rows


def ablation_diff(old: RunTables, new: RunTables) -> list[dict]:
    """Per layer, class and K both runs ablated: the change of the accuracy drop; per layer and K: the change of the
    largest drop over the classes (the ``ablation.max_drop`` gate's metric)."""
    before, after = old("ablation_results"), new("ablation_results")
    if before.empty or after.empty:
        return []
    columns = ["layer", "class_name", "k", "accuracy_drop"]
    both = before[columns].merge(after[columns], on=["layer", "class_name", "k"], suffixes=("_old", "_new"))
    rows = [
        _row(
            "ablation",
            "accuracy_drop",
            "class",
            row["layer"],
            f"{row['class_name']} k={row['k']}",
            row["accuracy_drop_new"] - row["accuracy_drop_old"],
            row["accuracy_drop_old"],
            row["accuracy_drop_new"],
        )
        for row in both.sort_values(["layer", "k", "class_name"]).to_dict("records")
    ]
    for (layer, k), group in both.groupby(["layer", "k"], sort=True):
        worst_old, worst_new = group["accuracy_drop_old"].max(), group["accuracy_drop_new"].max()
        rows.append(
            _row("ablation", "max_drop", "overall", layer, f"k={k}", worst_new - worst_old, worst_old, worst_new)
        )
    return rows


def tcav_diff(old: RunTables, new: RunTables) -> list[dict]:
    """Per concept, layer and class both runs tested: the change of the TCAV score."""
    scores = old("tcav_scores"), new("tcav_scores")
    return _changes(*scores, ("tcav", "score", "class"), "score_mean", ["concept", "class_name"])


def probes_diff(old: RunTables, new: RunTables) -> list[dict]:
    """Per layer and attribute both runs probed: the change of the probe's selectivity."""
    results = old("probe_results"), new("probe_results")
    return _changes(*results, ("probes", "selectivity", "attribute"), "selectivity", ["attribute"])


def _changes(
    before: pd.DataFrame, after: pd.DataFrame, kind: tuple[str, str, str], column: str, keys: list[str]
) -> list[dict]:
    """Rows (``kind``: method, metric, scope) of ``column``'s change per layer and ``keys`` both runs have, the keys
    joined by ' -> ' as the item."""
    if before.empty or after.empty:
        return []
    on = ["layer", *keys]
    both = before[[*on, column]].merge(after[[*on, column]], on=on, suffixes=("_old", "_new"))
    return [
        _row(
            *kind,
            row["layer"],
            " -> ".join(str(row[key]) for key in keys),
            row[f"{column}_new"] - row[f"{column}_old"],
            row[f"{column}_old"],
            row[f"{column}_new"],
        )
        for row in both.sort_values(on).to_dict("records")
    ]


def sanity_diff(old: RunTables, new: RunTables) -> list[dict]:
    """Per randomisation step both runs took (the same module re-drawn through): the change of the mean rank
    similarity of LIME's explanations under the re-drawn copy to its explanations under the model."""
    before, after = old("sanity_checks"), new("sanity_checks")
    if before.empty or after.empty:
        return []
    both = similarity_by_step(before).merge(
        similarity_by_step(after), on=["step", "randomised_through"], suffixes=("_old", "_new")
    )
    return [
        _row(
            "sanity",
            "lime_similarity",
            "step",
            row["randomised_through"],
            f"step={row['step']}",
            row["mean_new"] - row["mean_old"],
            row["mean_old"],
            row["mean_new"],
        )
        for row in both.to_dict("records")
    ]


# ------------------------------------------------------------------------------------------------- reading


def records(frame: pd.DataFrame) -> list[dict]:
    """Rows as dicts with NaN/NaT turned into None."""
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


def summarize(diffs: pd.DataFrame) -> list[dict]:
    """``version_diffs`` rows read per baseline run: what the report show/diff commands and the HTML report show.

    Each entry: run_id, version, basis; lime (overall jaccard and shift, samples by id) or None; dissection
    (overall detectors per layer, categories, concepts that gained or lost detectors) or None; actmax (overall
    ratios per layer, units by |change|, largest first) or None; ablation (largest drop per layer and K, drops per
    class and K) or None; sanity (LIME's mean similarity under the re-drawn copies, per step) or None; tcav (score
    changes per layer, concept and class) or None; probes (selectivity changes per attribute and layer) or None."""
    summaries = []
    for (baseline, version, basis), rows in diffs.groupby(
        ["baseline_run_id", "baseline_version", "baseline_basis"], sort=False, dropna=False
    ):
        summary: dict[str, Any] = {
            "run_id": baseline,
            "version": version,
            "basis": basis,
            "lime": None,
            "dissection": None,
            "actmax": None,
            "ablation": None,
            "tcav": None,
            "probes": None,
            "sanity": None,
        }
        lime = rows[rows["method"] == "lime"]
        if not lime.empty:
            overall = lime[lime["scope"] == "overall"].set_index("metric")["value"]
            samples = lime[lime["scope"] == "sample"].pivot_table(
                index="item", columns="metric", values="value", aggfunc="first"
            )
            summary["lime"] = {
                "jaccard": overall.get("topk_jaccard"),
                "shift": overall.get("attribution_shift"),
                "samples": [
                    {"item": item, "jaccard": values.get("topk_jaccard"), "shift": values.get("attribution_shift")}
                    for item, values in samples.sort_index().to_dict("index").items()
                ],
            }
        dissection = rows[rows["method"] == "dissection"]
        if not dissection.empty:
            summary["dissection"] = {
                "categories": _detector_changes(dissection, "category"),
                "concepts": [row for row in _detector_changes(dissection, "concept") if row["gained"] or row["lost"]],
                "overall": records(
                    dissection[(dissection["scope"] == "overall") & (dissection["metric"] == "detectors")].sort_values(
                        "layer"
                    )
                ),
            }
        actmax = rows[rows["method"] == "activation_max"]
        if not actmax.empty:
            units = actmax[actmax["scope"] == "unit"].copy()
            units["size"] = units["value"].abs()
            units = units.sort_values(["size", "layer", "item"], ascending=[False, True, True], na_position="last")
            summary["actmax"] = {
                "overall": records(actmax[actmax["scope"] == "overall"].sort_values("layer")),
                "units": records(units.drop(columns="size")),
            }
        ablation = rows[rows["method"] == "ablation"]
        if not ablation.empty:
            summary["ablation"] = {
                "overall": records(ablation[ablation["scope"] == "overall"].sort_values(["layer", "item"])),
                "classes": records(ablation[ablation["scope"] == "class"].sort_values(["layer", "item"])),
            }
        sanity = rows[rows["method"] == "sanity"]
        if not sanity.empty:
            summary["sanity"] = records(sanity.sort_values("item"))
        tcav = rows[rows["method"] == "tcav"]
        if not tcav.empty:
            summary["tcav"] = records(tcav.sort_values(["layer", "item"]))
        probed = rows[rows["method"] == "probes"]
        if not probed.empty:
            summary["probes"] = records(probed.sort_values(["item", "layer"]))
        summaries.append(summary)
    return summaries


def _detector_changes(rows: pd.DataFrame, scope: str) -> list[dict]:
    changes = []
    for (layer, item), group in rows[rows["scope"] == scope].groupby(["layer", "item"], sort=True):
        by_metric = {row["metric"]: row for row in records(group)}
        detectors = by_metric.get("detectors", {})
        changes.append(
            {
                "layer": layer,
                "item": item,
                "category": group["category"].iloc[0],
                "old": detectors.get("old_value"),
                "new": detectors.get("new_value"),
                "gained": (by_metric.get("detectors_gained") or {}).get("value") or 0,
                "lost": (by_metric.get("detectors_lost") or {}).get("value") or 0,
            }
        )
    return changes


def headline(summary: dict) -> str:
    """One line per baseline: LIME agreement, detectors and render ratios per layer."""
    parts = []
    if summary["lime"]:
        parts.append(
            f"LIME top-k agreement {summary['lime']['jaccard']:.2f}, attribution shift {summary['lime']['shift']:.2f}"
        )
    for row in (summary["dissection"] or {}).get("overall", []):
        parts.append(f"{row['layer']} detectors {row['old_value']:.0f} -> {row['new_value']:.0f}")
    for row in (summary["actmax"] or {}).get("overall", []):
        parts.append(f"{row['layer']} render ratio {row['old_value']:.2f} -> {row['new_value']:.2f}")
    for row in (summary["ablation"] or {}).get("overall", []):
        parts.append(
            f"{row['layer']} largest ablation drop ({row['item']}) {row['old_value']:.2f} -> {row['new_value']:.2f}"
        )
    if summary["tcav"]:
        top = max(summary["tcav"], key=lambda row: abs(row["value"]))
        parts.append(
            f"largest TCAV change {top['item']} at {top['layer']} {top['old_value']:.2f} -> {top['new_value']:.2f}"
        )
    if summary["probes"]:
        top = max(summary["probes"], key=lambda row: abs(row["value"]))
        parts.append(
            f"largest probe change {top['item']} at {top['layer']} selectivity {top['old_value']:.2f} -> "
            f"{top['new_value']:.2f}"
        )
    if summary["sanity"]:
        old, new = ("/".join(f"{row[key]:.2f}" for row in summary["sanity"]) for key in ("old_value", "new_value"))
        parts.append(f"LIME sanity similarity by step {old} -> {new}")
    return "; ".join(parts)
