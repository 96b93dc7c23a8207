"""One self-contained HTML page per audit run, for a reviewer: no scripts, no fetches, images inline.

>>> from interp_audit.html_report import write_html
>>> write_html("./reports", "3f2a", "run.html")

Every value that comes from a spec, a model or a table is escaped by Jinja2's autoescaping, and nothing is
marked safe: images are ``data:image/png;base64,...`` URIs built here from bytes checked to be PNG, and base64
holds no character HTML would escape. A Content-Security-Policy
meta tag forbids every fetch but ``data:`` images, so the page works offline and cannot call out.
"""

from __future__ import annotations

import base64
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from interp_audit.diff import records, summarize
from interp_audit.readings import similarity_by_step, versus_random
from interp_audit.report import find_run, load_table, review_state
from interp_audit.store import ReportStore

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
MAX_EXEMPLARS = 4  # exemplar thumbnails shown per unit: the page stays small
TOP_UNIT_CHANGES = 10  # activation-max units with the largest |ratio change| shown per baseline
DASH = "\u2013"


# ----------------------------------------------------------------------------------------------- formatting


def _missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    try:
        return bool(isinstance(value, float) and math.isnan(value))
    except TypeError:
        return False


def fmt(value: Any) -> str:
    """Floats to 3 significant digits, integers as they are, None/NaN as a dash."""
    if isinstance(value, np.generic):  # numpy scalars
        value = value.item()
    if _missing(value):
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value == 0:
            return "0"
        if math.isinf(value):
            return "\u221e" if value > 0 else "-\u221e"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3g}"
    return str(value)


def fmt_time(value: Any) -> str:
    if _missing(value):
        return DASH
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value.strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(value)


def png_uri(data: Any) -> str | None:
    """A data URI of PNG bytes; None for anything that is not a PNG (never shown then)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        return None
    data = bytes(data)
    if not data.startswith(PNG_SIGNATURE):
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _mean(series: pd.Series) -> float | None:
    values = pd.to_numeric(series, errors="coerce").dropna()
    return float(values.mean()) if len(values) else None


# ------------------------------------------------------------------------------------------------- sections


def _summary(run: dict) -> dict:
    return {
        "audit": run["audit_name"],
        "model": run["model_name"],
        "version": run["model_version"],
        "source": run["model_source"],
        "status": run["status"],
        "passed": run["status"] == "passed",
        "run_id": run["run_id"],
        "started": fmt_time(run["started_at"]),
        "finished": fmt_time(run["finished_at"]),
        "num_samples": run["num_samples"],
    }


def _review(store: ReportStore, run: dict) -> dict:
    reviews, current = review_state(store, run)
    rows = [
        {
            "decision": row["decision"],
            "reviewer": row["reviewer"],
            "time": fmt_time(row["reviewed_at"]),
            "comment": row["comment"],
            "matches": row["tables_sha256"] == current,
            "sha256": row["tables_sha256"],
        }
        for row in records(reviews)
    ]
    return {"reviews": rows, "current": current, "run_id": run["run_id"]}


def _gates(frame: pd.DataFrame) -> dict | None:
    if frame.empty:
        return None
    rows = records(frame.sort_values("gate"))
    order = {"failed": 0, "skipped": 1, "passed": 2}
    rows.sort(key=lambda row: order.get(row["outcome"], 3))
    return {
        "rows": rows,
        "failed": sum(row["outcome"] == "failed" for row in rows),
        "passed": sum(row["outcome"] == "passed" for row in rows),
        "total": len(rows),
    }


def _diff(frame: pd.DataFrame) -> list[dict] | None:
    """Per baseline run: LIME agreement, dissection detector changes, the largest activation-max ratio changes."""
    if frame.empty:
        return None
    baselines = summarize(frame)
    for baseline in baselines:
        if baseline["actmax"]:
            units = baseline["actmax"]["units"]
            baseline["actmax"] = {**baseline["actmax"], "units": units[:TOP_UNIT_CHANGES], "num_units": len(units)}
    return baselines


def _parity(frame: pd.DataFrame) -> list[dict] | None:
    if frame.empty:
        return None
    return [
        {**row, "shape": " \u00d7 ".join(str(int(n)) for n in row["shape"])}
        for row in records(frame.sort_values("output"))
    ]


def _contracts(frame: pd.DataFrame) -> dict | None:
    if frame.empty:
        return None
    rows = records(frame.sort_values(["table_name", "expectation", "column"], na_position="first"))
    failed = [row for row in rows if not row["success"]]
    return {"rows": rows, "failed": failed, "met": len(rows) - len(failed), "total": len(rows)}


def _predictions(frame: pd.DataFrame) -> dict | None:
    if frame.empty:
        return None
    labelled = frame[frame["correct"].notna()]
    accuracy = float(labelled["correct"].astype(bool).mean()) if len(labelled) else None
    names: dict[int, str] = {}
    for index, name in (*zip(frame["label"], frame["label_name"]), *zip(frame["predicted"], frame["predicted_name"])):
        if not _missing(index) and not _missing(name):
            names.setdefault(int(index), name)
    classes = sorted({int(c) for c in frame["predicted"]} | {int(c) for c in frame["label"].dropna()})
    per_class = []
    for cls in classes:
        true = labelled[labelled["label"] == cls]
        per_class.append(
            {
                "index": cls,
                "name": names.get(cls),
                "predicted": int((frame["predicted"] == cls).sum()),
                "true": len(true) if len(labelled) else None,
                "accuracy": float(true["correct"].astype(bool).mean()) if len(true) else None,
            }
        )
    return {
        "samples": len(frame),
        "labelled": len(labelled),
        "accuracy": accuracy,
        "classes": per_class,
        "mean_probability": _mean(frame["probability"]),
    }


LIME_SCORES = (
    ("probability", "probability"),
    ("r2_heldout", "R\u00b2 held out"),
    ("stability", "stability"),
    ("deletion_auc", "deletion AUC \u2193"),
    ("insertion_auc", "insertion AUC \u2191"),
    ("faithfulness_correlation", "faithfulness \u2191"),
    ("prediction_gap", "prediction gap"),
)


def _lime(explanations: pd.DataFrame, attributions: pd.DataFrame) -> dict | None:
    if explanations.empty:
        return None
    explanations = explanations.sort_values(["sample_id", "label"])
    means = [{"label": label, "value": _mean(explanations[column])} for column, label in LIME_SCORES]
    cards, tabular = [], []
    for row in records(explanations):
        image = png_uri(row.get("overlay_png"))
        base = {
            "sample_id": row["sample_id"],
            "label": row["label"],
            "label_name": row["label_name"],
            **{column: row[column] for column, _ in LIME_SCORES},
        }
        if image is not None:
            cards.append({**base, "image": image})
        else:
            top_k = len(row["top_features"]) if row.get("top_features") is not None else 5
            mine = attributions[
                (attributions["sample_id"] == row["sample_id"])
                & (attributions["label"] == row["label"])
                & (attributions["rank"] <= top_k)
            ]
            tabular.append({**base, "features": records(mine.sort_values("rank"))})
    return {"count": len(explanations), "means": means, "cards": cards, "tabular": tabular}


def _sanity(checks: pd.DataFrame) -> list[dict] | None:
    """The similarity-by-layer curve: per randomisation step, the mean rank similarity to the model's explanations
    (the bar: of the absolute weights, 0 to 1)."""
    if checks.empty:
        return None
    return [
        {
            "step": row["step"],
            "layer": row["randomised_through"],
            "mean": row["mean"],
            "max": row["max"],
            "mean_abs": row["mean_abs"],
            "width": round(100 * min(max(row["mean_abs"], 0.0), 1.0), 1),
        }
        for row in similarity_by_step(checks).to_dict("records")
    ]


def _actmax(units: pd.DataFrame, exemplars: pd.DataFrame) -> dict | None:
    if units.empty:
        return None
    by_unit: dict[tuple, list[dict]] = {}
    if not exemplars.empty:
        kept = exemplars[exemplars["rank"] <= MAX_EXEMPLARS].sort_values(["layer", "unit", "rank"])
        for row in records(kept.drop(columns=[c for c in ("model", "version") if c in kept])):
            image = png_uri(row["thumbnail_png"])
            by_unit.setdefault((row["layer"], int(row["unit"])), []).append(
                {"rank": row["rank"], "sample_id": row["sample_id"], "activation": row["activation"], "image": image}
            )
    cards = []
    for row in records(units.sort_values(["layer", "unit", "render"]).drop(columns=["curve", "curve_steps"])):
        cards.append(
            {
                "layer": row["layer"],
                "unit": row["unit"],
                "render": row["render"],
                "objective": row["objective"],
                "image": png_uri(row["render_png"]),
                "ratio": row["ratio"],
                "robustness": row["robustness"],
                "diversity": row["diversity"],
                "final_activation": row["final_activation"],
                "dataset_max": row["dataset_max"],
                "random_ratio": row.get("random_ratio"),
                "random_robustness": row.get("random_robustness"),
                "exemplars": by_unit.get((row["layer"], int(row["unit"])), []) if row["render"] == 0 else [],
            }
        )
    layers = [
        {
            "layer": layer,
            "units": int(group["unit"].nunique()),
            "ratio": _mean(group["ratio"]),
            "above_one": int((group["ratio"] >= 1).sum()),
            "robustness": _mean(group["robustness"]),
        }
        for layer, group in units.groupby("layer", sort=True)
    ]
    total_exemplars = int(exemplars.groupby(["layer", "unit"]).size().max()) if not exemplars.empty else 0
    return {
        "cards": cards,
        "layers": layers,
        "max_exemplars": MAX_EXEMPLARS,
        "total_exemplars": total_exemplars,
        "multiple_renders": bool((units["render"] > 0).any()),
        "versus_random": records(versus_random(units)),
    }


def _dissection(summary: pd.DataFrame, units: pd.DataFrame) -> dict | None:
    if summary.empty and units.empty:
        return None
    layers = []
    for layer, group in summary.groupby("layer", sort=True):
        scale = max(
            1,
            int(group["detectors"].max()),
            int(pd.to_numeric(group["baseline_detectors"], errors="coerce").fillna(0).max()),
        )
        bars = []
        for row in records(group.sort_values("category")):
            baseline = row["baseline_detectors"]
            bars.append(
                {
                    **row,
                    "width": round(100 * row["detectors"] / scale, 1),
                    "baseline_width": None if baseline is None else round(100 * baseline / scale, 1),
                }
            )
        total_units = int((units["layer"] == layer).sum()) if not units.empty else None
        layers.append({"layer": layer, "bars": bars, "units": total_units, "detectors": int(group["detectors"].sum())})
    detectors = units[units["is_detector"].astype(bool)] if not units.empty else units
    rows = records(detectors.sort_values(["layer", "iou"], ascending=[True, False])) if not units.empty else []
    return {
        "layers": layers,
        "detectors": rows,
        "total_units": len(units),
        "has_baseline": bool(summary["baseline_detectors"].notna().any()) if not summary.empty else False,
    }


def _ablation(results: pd.DataFrame, units: pd.DataFrame) -> dict | None:
    """Per layer and class, a bar per K: the drop of the class's top-K units next to random units' mean; and the
    detectors whose zeroing alone costs a class most (dissection's units with their ablation effect)."""
    if results.empty:
        return None
    scale = max(0.05, float(results[["accuracy_drop", "random_drop_mean"]].max().max()))

    def width(value) -> float:
        return 0.0 if _missing(value) else round(100 * min(max(value, 0.0), scale) / scale, 1)

    layers = []
    for layer, group in results.groupby("layer", sort=True):
        classes = [
            {
                "class_name": name,
                "bars": [
                    {**row, "width": width(row["accuracy_drop"]), "random_width": width(row["random_drop_mean"])}
                    for row in records(rows.sort_values("k"))
                ],
            }
            for name, rows in group.groupby("class_name", sort=True)
        ]
        layers.append({"layer": layer, "classes": classes})
    detectors = pd.DataFrame()
    if not units.empty:
        detectors = units[units["is_detector"].astype(bool) & units["ablation_class"].notna()]
        detectors = detectors.sort_values("ablation_probability_drop", ascending=False).head(TOP_UNIT_CHANGES)
    return {
        "layers": layers,
        "has_random": bool(results["random_drop_mean"].notna().any()),
        "detectors": records(detectors) if not detectors.empty else [],
    }


def _percent(share: float) -> float:
    """A share in [0, 1] as a bar's width in percent (clipped)."""
    return round(100 * min(max(float(share), 0.0), 1.0), 1)


def _tcav(scores: pd.DataFrame) -> dict | None:
    """Per layer and class, a bar per concept on a 0-1 scale: its TCAV score, the random sets' null as mean +- std
    behind it, 0.5 (no direction preferred) marked, and whether the t-test found it significant."""
    if scores.empty:
        return None

    layers = []
    for layer, group in scores.groupby("layer", sort=True):
        classes = []
        for name, rows in group.sort_values(["class_index", "concept"]).groupby("class_name", sort=False):
            bars = [
                {
                    **row,
                    "width": _percent(row["score_mean"]),
                    "null_left": _percent(row["random_score_mean"] - row["random_score_std"]),
                    "null_width": _percent(row["random_score_mean"] + row["random_score_std"])
                    - _percent(row["random_score_mean"] - row["random_score_std"]),
                }
                for row in records(rows)
            ]
            classes.append({"class_name": name, "bars": bars})
        layers.append({"layer": layer, "classes": classes})
    return {
        "layers": layers,
        "tests": len(scores),
        "significant": int(scores["significant"].astype(bool).sum()),
        "threshold": float(scores["threshold"].iloc[0]),
    }


def _probes(results: pd.DataFrame) -> dict | None:
    """Per attribute, a bar per layer in order of depth: the probe's accuracy, the control task's behind it, and the
    chance level marked; the selectivity is their difference."""
    if results.empty:
        return None

    attributes = [
        {
            "attribute": attribute,
            "inputs": rows["inputs"].iloc[0],
            "bars": [
                {
                    **row,
                    "width": _percent(row["accuracy_mean"]),
                    "control_width": _percent(row["control_accuracy"]),
                    "chance_left": _percent(row["chance"]),
                }
                for row in records(rows.sort_values("depth"))
            ],
        }
        for attribute, rows in results.groupby("attribute", sort=True)
    ]
    return {"attributes": attributes}


def _reproducibility(run: dict) -> dict:
    try:
        versions = json.loads(run["package_versions"] or "{}")
        packages = sorted(versions.items()) if isinstance(versions, dict) else []
        raw_versions = None if isinstance(versions, dict) else run["package_versions"]
    except (TypeError, ValueError):
        packages, raw_versions = [], run["package_versions"]
    providers = run["ort_providers"]
    fields = [
        ("run id", run["run_id"]),
        ("model source", run["model_source"]),
        ("weights sha256", run["weights_sha256"]),
        ("onnx sha256", run["onnx_sha256"]),
        ("spec sha256", run["spec_sha256"]),
        ("seed", run["seed"]),
        ("data uri", run["data_uri"]),
        ("samples", run["num_samples"]),
        ("device", run["device"]),
        ("ONNX Runtime providers", ", ".join(providers) if providers is not None else None),
        ("started", fmt_time(run["started_at"])),
        ("finished", fmt_time(run["finished_at"])),
    ]
    return {"fields": fields, "packages": packages, "raw_versions": raw_versions, "spec_text": run["spec_text"]}


# ----------------------------------------------------------------------------------------------- rendering


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("interp_audit", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html", "j2"), default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = fmt
    return env


def render_html(store: str | Path | ReportStore, run_id: str) -> str:
    """The report of one run (full id or unique prefix) as a single self-contained HTML page."""
    opened = store if isinstance(store, ReportStore) else ReportStore.open(store)
    run = find_run(opened, run_id)

    def table(name: str) -> pd.DataFrame:
        return load_table(opened, name, run_id=run["run_id"])

    context = {
        "csp": CSP,
        "summary": _summary(run),
        "review": _review(opened, run),
        "gates": _gates(table("gate_results")),
        "diff": _diff(table("version_diffs")),
        "parity": _parity(table("onnx_parity")),
        "contracts": _contracts(table("contract_results")),
        "predictions": _predictions(table("predictions")),
        "lime": _lime(table("lime_explanations"), table("lime_attributions")),
        "sanity": _sanity(table("sanity_checks")),
        "actmax": _actmax(table("actmax_units"), table("actmax_exemplars")),
        "dissection": _dissection(table("dissection_summary"), table("dissection_units")),
        "ablation": _ablation(table("ablation_results"), table("dissection_units")),
        "tcav": _tcav(table("tcav_scores")),
        "probes": _probes(table("probe_results")),
        "repro": _reproducibility(run),
        "generated": fmt_time(datetime.now(UTC)),
    }
    return _environment().get_template("report.html.j2").render(**context)


def write_html(store: str | Path | ReportStore, run_id: str, path: str | Path) -> Path:
    """Render the run's report and write it to ``path`` (rendered first: nothing is written if that fails)."""
    html = render_html(store, run_id)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(html, encoding="utf-8")
    return target
