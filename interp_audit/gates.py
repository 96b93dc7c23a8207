"""The spec's gates: one verdict per gate on a metric of the run or of its diff with the baseline version.

Contracts check every row of a table; gates judge the run as a whole ("at least 20 detectors", "at most 30% of
the LIME attribution in the corners", "LIME agrees with the approved version"). A gate that has nothing to
measure (no baseline version yet, no rows) is ``skipped``, never passed or failed silently.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import pandas as pd

from interp_audit.diff import RunTables
from interp_audit.readings import largest_drops, similarity_by_step, versus_random
from interp_audit.report import Baseline
from interp_audit.spec import (
    AblationGate,
    ActmaxGate,
    DetectorsGate,
    DiffGate,
    LimeRegionGate,
    LimeSanityGate,
    ProbeGate,
    RegionSpec,
    TcavGate,
)


def evaluate_gates(gates: list, run: RunTables, diffs: list[dict], baseline: Baseline | None) -> list[dict]:
    """One ``gate_results`` row (without run_id) per gate."""
    return [_verdict(gate, *_measure(gate, run, diffs, baseline)) for gate in gates]


def _verdict(gate, value: float | None, detail: str) -> dict:
    if value is None:
        outcome = "skipped"
    else:
        low = gate.min is None or value >= gate.min
        high = gate.max is None or value <= gate.max
        outcome = "passed" if low and high else "failed"
    return {
        "gate": gate.label,
        "metric": gate.metric,
        "params": json.dumps(gate.model_dump(exclude_none=True, by_alias=True), sort_keys=True),
        "value": value,
        "min": gate.min,
        "max": gate.max,
        "outcome": outcome,
        "detail": detail,
    }


def _measure(gate, run: RunTables, diffs: list[dict], baseline: Baseline | None) -> tuple[float | None, str]:
    if isinstance(gate, DetectorsGate):
        return _detectors(gate, run("dissection_units"))
    if isinstance(gate, LimeRegionGate):
        return _region_share(gate.region, run("lime_explanations"), run("lime_attributions"))
    if isinstance(gate, ActmaxGate):
        return _actmax_share(gate, run("actmax_units"))
    if isinstance(gate, AblationGate):
        return _max_drop(gate, run("ablation_results"))
    if isinstance(gate, LimeSanityGate):
        return _randomised_similarity(run("sanity_checks"))
    if isinstance(gate, TcavGate):
        return _tcav_score(gate, run("tcav_scores"))
    if isinstance(gate, ProbeGate):
        return _selectivity(gate, run("probe_results"))
    return _diff_metric(gate, diffs, baseline)


def _selectivity(gate: ProbeGate, results: pd.DataFrame) -> tuple[float | None, str]:
    if results.empty:
        return None, "no probes in this run"
    chosen = results[results["attribute"] == gate.attribute]
    if gate.layer:
        chosen = chosen[chosen["layer"] == gate.layer]
    if chosen.empty:
        return None, f"no probe of {gate.attribute}{f' at {gate.layer}' if gate.layer else ''}"
    top = chosen.loc[chosen["selectivity"].idxmax()]
    return float(top["selectivity"]), (
        f"{gate.attribute} at {top['layer']}: accuracy {top['accuracy_mean']:.2f} against the control task's "
        f"{top['control_accuracy']:.2f} (chance {top['chance']:.2f}, {top['samples']} inputs)"
    )


def _tcav_score(gate: TcavGate, scores: pd.DataFrame) -> tuple[float | None, str]:
    if scores.empty:
        return None, "no TCAV in this run"
    by_class = "class_index" if isinstance(gate.class_, int) else "class_name"
    chosen = scores[(scores["concept"] == gate.concept) & (scores[by_class] == gate.class_)]
    if gate.layer:
        chosen = chosen[chosen["layer"] == gate.layer]
    if chosen.empty:
        return None, f"no TCAV test of {gate.concept} for class {gate.class_} (a class without inputs is not tested)"
    counted = chosen["score_mean"].where(chosen["significant"].astype(bool), 0.5)  # not significant: no dependence
    top = chosen.loc[counted.idxmax()]
    p_value = "n/a" if pd.isna(top["p_value"]) else f"{top['p_value']:.2g}"
    verdict = (
        "significant" if top["significant"] else f"not significant (threshold {top['threshold']:.2g}), counted as 0.5"
    )
    return float(counted.max()), (
        f"{gate.concept} -> {top['class_name']} at {top['layer']}: score {top['score_mean']:.2f} against random "
        f"{top['random_score_mean']:.2f} +- {top['random_score_std']:.2f}, p {p_value}, {verdict}"
    )


def _actmax_share(gate: ActmaxGate, units: pd.DataFrame) -> tuple[float | None, str]:
    if units.empty:
        return None, "no activation-maximization renders in this run"
    if gate.metric == "activation_max.share_beating_dataset":
        beating = units["final_activation"] >= units["dataset_max"]
        return float(beating.mean()), f"{int(beating.sum())} of {len(units)} renders beat every dataset image"
    layers = versus_random(units)
    compared, beating = int(layers["compared"].sum()), int(layers["beating"].sum())
    if not compared:
        return None, "no render has a ratio for both the model and its re-drawn copy (ops.activation_max.sanity)"
    per_layer = ", ".join(f"{row.layer} {row.beating}/{row.compared}" for row in layers.itertuples())
    return beating / compared, (
        f"{beating} of {compared} renders with a ratio for both beat the re-drawn copy's render of their unit "
        f"({per_layer})"
    )


def _randomised_similarity(checks: pd.DataFrame) -> tuple[float | None, str]:
    if checks.empty:
        return None, "no sanity check in this run (ops.lime.sanity)"
    steps = similarity_by_step(checks)
    top = steps.loc[steps["mean"].idxmax()]
    return float(top["mean"]), (
        f"highest mean rank similarity over the {len(steps)} randomisation step(s): step {top['step']}, re-drawn "
        f"through {top['randomised_through']}, over {int((checks['step'] == top['step']).sum())} explanations"
    )


def _max_drop(gate: AblationGate, results: pd.DataFrame) -> tuple[float | None, str]:
    if results.empty:
        return None, "no ablation in this run"
    k = gate.k if gate.k is not None else int(results["k"].min())
    chosen = largest_drops(results)
    chosen = chosen[chosen["k"] == k]
    if gate.layer:
        chosen = chosen[chosen["layer"] == gate.layer]
    if chosen.empty:
        return None, f"no ablation of {k} units{f' in layer {gate.layer}' if gate.layer else ''}"
    worst = chosen.loc[chosen["accuracy_drop"].idxmax()]
    return float(worst["accuracy_drop"]), (
        f"zeroing {k} unit(s) of {worst['layer']} ({', '.join(map(str, worst['units']))}) takes class "
        f"{worst['class_name']} from {worst['accuracy_before']:.2f} to {worst['accuracy_after']:.2f} balanced accuracy"
    )


def _detectors(gate: DetectorsGate, units: pd.DataFrame) -> tuple[float | None, str]:
    if units.empty:
        return None, "no dissection in this run"
    chosen = units[units["is_detector"]]
    if gate.metric == "dissection.detectors_above_baseline":
        chosen = chosen[chosen["iou"] > chosen["baseline_max_iou"].fillna(-np.inf)]
    scope = [f"layer {gate.layer}"] if gate.layer else []
    if gate.layer:
        chosen = chosen[chosen["layer"] == gate.layer]
    if gate.category:
        chosen, scope = chosen[chosen["category"] == gate.category], [*scope, f"category {gate.category}"]
    where = " in " + ", ".join(scope) if scope else ""
    return float(len(chosen)), f"{len(chosen)} detector units{where}"


def region_mask(region: RegionSpec, height: int, width: int) -> np.ndarray:
    """(H, W) bool: the pixels whose centres lie inside the region's boxes."""
    ys, xs = (np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width
    mask = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in region.as_boxes():
        mask |= ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]
    return mask


def region_share(segments: np.ndarray, weights: Mapping[int, float], region: np.ndarray) -> float | None:
    """Share of the positive attribution inside the region, each superpixel's weight spread over its pixels.

    ``segments`` holds each pixel's superpixel id and ``weights`` the weight of each id; None without positive
    weight (nothing supports the label, so nothing can sit in the region)."""
    ids, segment_of_pixel = np.unique(segments, return_inverse=True)
    positive = np.clip([weights[segment] for segment in ids.tolist()], 0, None)
    if positive.sum() <= 0:
        return None
    areas = np.bincount(segment_of_pixel.ravel(), minlength=len(ids))
    inside = np.bincount(segment_of_pixel.ravel(), weights=region.ravel().astype(float), minlength=len(ids))
    return float((positive * inside / areas).sum() / positive.sum())


def _region_share(region: RegionSpec, explanations: pd.DataFrame, attributions: pd.DataFrame):
    if explanations.empty or explanations["segments"].isna().all():
        return None, "no image LIME explanations in this run"
    weights = {key: group for key, group in attributions.groupby(["sample_id", "label"])}
    shares = []
    for row in explanations.itertuples():
        if row.segments is None:
            continue
        segments = np.asarray(row.segments).reshape(row.height, row.width)
        features = weights[(row.sample_id, row.label)]
        share = region_share(
            segments, dict(zip(features["segment"], features["weight"])), region_mask(region, row.height, row.width)
        )
        if share is not None:
            shares.append(share)
    if not shares:
        return None, "no explanation has a superpixel with positive weight"
    return float(np.mean(shares)), (
        f"mean over {len(shares)} explanations (largest {max(shares):.3f}); region "
        f"{region.model_dump(exclude_none=True)}"
    )


DIFF_METRICS = {  # gate metric -> (version_diffs method, metric, scope) whose overall rows it reads
    "lime.agreement": ("lime", "topk_jaccard", "overall"),
    "dissection.detectors_lost": ("dissection", "detectors_lost", "category"),
    "activation_max.ratio_change": ("activation_max", "ratio", "overall"),
}


def _diff_metric(gate: DiffGate, diffs: list[dict], baseline: Baseline | None) -> tuple[float | None, str]:
    if baseline is None:
        return None, "no earlier version to compare with (this is the first audited version)"
    if gate.against == "approved" and baseline.basis != "approved":
        return None, (
            f"no approved earlier version; compared with passed v{baseline.version} instead (see "
            "version_diffs), which this gate does not accept (against: approved)"
        )
    method, metric, scope = DIFF_METRICS[gate.metric]
    rows = [row for row in diffs if (row["method"], row["metric"], row["scope"]) == (method, metric, scope)]
    if not rows:
        return None, f"v{baseline.version} and this run share no {method} results to compare"
    against = f"v{baseline.version} ({baseline.basis}, run {baseline.run_id[:8]})"
    if gate.metric == "lime.agreement":
        (row,) = rows
        compared = sum(r["metric"] == "topk_jaccard" and r["scope"] == "sample" for r in diffs)
        return row["value"], f"mean top-k Jaccard over {compared} explanations against {against}"
    if gate.metric == "dissection.detectors_lost":
        lost = sum(row["value"] for row in rows)
        return float(
            lost
        ), f"detector units lost (per category, {len({r['layer'] for r in rows})} layer(s)) against {against}"
    change = float(np.mean([row["value"] for row in rows]))
    return change, f"mean change of the render ratio over {len(rows)} layer(s) against {against}"
