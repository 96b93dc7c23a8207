"""Version diffs, gates and the choice of baseline, on hand-made tables whose answers are known."""

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from test_store import run_tables

from data_contracts import conform
from interp_audit import report
from interp_audit.diff import actmax_diff, attribution_shift, dissection_diff, lime_diff
from interp_audit.gates import Baseline, evaluate_gates, region_mask, region_share
from interp_audit.spec import DetectorsGate, DiffGate, RegionSpec
from interp_audit.store import ReportStore
from interp_ops.images import label_map_png, read_label_map_png


def frames(**tables):
    return lambda name: tables.get(name, pd.DataFrame())


def test_label_maps_round_trip_through_16_bit_png():
    labels = np.array([[7, 7, 300], [-2, 300, 7]])
    assert read_label_map_png(label_map_png(labels)).tolist() == [[1, 1, 2], [0, 2, 1]]  # ranks of -2, 7, 300


def test_region_share_spreads_each_superpixel_weight_over_its_pixels():
    segments = np.array([[0, 0, 1, 1]] * 4)  # left half rank 0, right half rank 1
    region = region_mask(RegionSpec(boxes=[(0, 0, 0.25, 1)]), 4, 4)  # the first column
    assert region.sum() == 4 and region[:, 0].all()
    # rank 0 (weight 3) has half its pixels in the region, rank 1 (weight 1) none; negative weights do not count
    assert region_share(segments, np.array([3.0, 1.0]), region) == pytest.approx(1.5 / 4)
    assert region_share(segments, np.array([3.0, -5.0]), region) == pytest.approx(0.5)
    assert region_share(segments, np.array([-1.0, 0.0]), region) is None
    corners = region_mask(RegionSpec(corners=0.25), 8, 8)
    assert corners.sum() == 16 and corners[0, 0] and corners[7, 7] and not corners[4, 4]


def test_attribution_shift_is_the_total_variation_of_the_weight_shares():
    assert attribution_shift({"a": 1, "b": 1}, {"a": 2, "b": 2}) == 0
    assert attribution_shift({"a": 1}, {"b": -3}) == 1
    assert attribution_shift({"a": 3, "b": 1}, {"a": 1, "b": 1}) == pytest.approx(0.25)


SAME = label_map_png(np.arange(4).reshape(2, 2))


def explanation(sample, top, weights, segments=SAME):
    return (
        {"sample_id": sample, "label": 0, "top_features": top, "segments_png": segments},
        [{"sample_id": sample, "label": 0, "feature": f, "weight": w} for f, w in weights.items()],
    )


def lime_frames(*explained):
    return frames(
        lime_explanations=pd.DataFrame([e for e, _ in explained]),
        lime_attributions=pd.DataFrame([a for _, rows in explained for a in rows]),
    )


def test_lime_diff_compares_top_k_only_where_the_superpixels_are_the_same():
    old = lime_frames(
        explanation("s1", ["1", "2"], {"1": 2, "2": 1, "3": 0}), explanation("s2", ["1", "2"], {"1": 1, "2": 1})
    )
    new = lime_frames(
        explanation("s1", ["2", "3"], {"1": 0, "2": 1, "3": 2}),
        explanation("s2", ["1", "2"], {"1": 1, "2": 1}, segments=label_map_png(np.eye(2))),
    )
    rows = {(r["metric"], r["scope"], r["item"]): r["value"] for r in lime_diff(old, new)}
    assert rows[("topk_jaccard", "sample", "s1")] == pytest.approx(1 / 3)
    assert rows[("attribution_shift", "sample", "s1")] == pytest.approx(2 / 3)
    assert ("topk_jaccard", "sample", "s2") not in rows  # another segmentation: not comparable
    assert rows[("topk_jaccard", "overall", "*")] == pytest.approx(1 / 3)


def test_dissection_diff_counts_detectors_gained_and_lost_per_concept_and_category():
    def units(*detected):
        return pd.DataFrame(
            [
                {
                    "layer": "conv",
                    "unit": i,
                    "concept": concept or "red",
                    "is_detector": bool(concept),
                    "category": {"red": "color", "blue": "color", "disc": "object"}[concept or "red"],
                }
                for i, concept in enumerate(detected)
            ]
        )

    rows = dissection_diff(
        frames(dissection_units=units("red", "red", "disc", None)),
        frames(dissection_units=units("red", "blue", None, "disc")),
    )
    table = {(r["metric"], r["scope"], r["item"]): r for r in rows}
    assert table[("detectors_lost", "concept", "red")]["value"] == 1
    assert table[("detectors_gained", "concept", "blue")]["value"] == 1
    assert table[("detectors_gained", "concept", "disc")]["value"] == 1  # unit 3 gained it, unit 2 lost it
    assert table[("detectors_lost", "concept", "disc")]["value"] == 1
    assert table[("detectors", "category", "color")]["old_value"] == 2
    assert table[("detectors_lost", "category", "color")]["value"] == 0  # unit 1: red -> blue stays a colour
    assert table[("detectors", "overall", "*")]["old_value"] == 3 and table[("detectors", "overall", "*")]["value"] == 0


def test_gates_pass_fail_and_skip():
    units = pd.DataFrame(
        [
            {"layer": "a", "unit": 0, "category": "color", "is_detector": True, "iou": 0.2, "baseline_max_iou": 0.1},
            {"layer": "a", "unit": 1, "category": "object", "is_detector": True, "iou": 0.1, "baseline_max_iou": 0.3},
        ]
    )
    run = frames(dissection_units=units)
    gates = [
        DetectorsGate(metric="dissection.detectors", min=2),
        DetectorsGate(name="above", metric="dissection.detectors_above_baseline", min=2),
        DetectorsGate(name="objects", metric="dissection.detectors", category="object", max=0),
        DiffGate(metric="lime.agreement", min=0.5),
    ]
    first = {row["gate"]: row for row in evaluate_gates(gates, run, [], None)}
    assert [first[g]["outcome"] for g in ("dissection.detectors", "above", "objects", "lime.agreement")] == [
        "passed",
        "failed",
        "failed",
        "skipped",
    ]
    assert first["above"]["value"] == 1 and "first audited version" in first["lime.agreement"]["detail"]
    overall = [{"method": "lime", "metric": "topk_jaccard", "scope": "overall", "value": 0.7}]
    passed_only = evaluate_gates(gates[3:], run, overall, Baseline("r0", "1", "passed"))[0]
    assert passed_only["outcome"] == "skipped" and "no approved earlier version" in passed_only["detail"]
    approved = evaluate_gates(gates[3:], run, overall, Baseline("r0", "1", "approved"))[0]
    assert approved["outcome"] == "passed" and approved["value"] == 0.7


def publish(store, run_id, version, status="passed"):
    store.stage(run_id, "m", version, run_tables(run_id, version, status))
    store.publish(run_id, "m", version)


def test_the_baseline_is_the_approved_version_while_its_approval_holds(tmp_path):
    store = ReportStore.open(tmp_path)
    publish(store, "r1", "1")
    publish(store, "r2", "2")
    publish(store, "r3", "3", status="failed_gates")
    assert report.find_baseline(store, "m", "4") == Baseline("r2", "2", "passed")  # latest passed, none approved
    report.review_run(store, "r1", approve=True, reviewer="ada", comment=None)
    assert report.find_baseline(store, "m", "4") == Baseline("r1", "1", "approved")
    assert report.find_baseline(store, "m", "1") == Baseline("r2", "2", "passed")  # never its own version

    path = tmp_path / "onnx_parity" / "model=m" / "version=1" / "r1.parquet"
    rows = pq.read_table(path).to_pylist()
    rows[0]["argmax_agreement"] = 0.5  # the approved report is changed afterwards: its approval no longer holds
    pq.write_table(conform("onnx_parity", rows), path)
    assert report.find_baseline(store, "m", "4") == Baseline("r2", "2", "passed")

    report.review_run(store, "r2", approve=True, reviewer="ada", comment=None)
    report.review_run(store, "r2", approve=False, reviewer="bob", comment="withdrawn")
    assert report.find_baseline(store, "m", "4").basis == "passed"  # the latest review of r2 rejects it


def test_actmax_diff_skips_units_without_a_ratio():
    def units(*ratios):
        return pd.DataFrame([{"layer": "conv", "unit": i, "render": 0, "ratio": r} for i, r in enumerate(ratios)])

    rows = actmax_diff(frames(actmax_units=units(2.0, None, 4.0)), frames(actmax_units=units(1.0, 3.0, None)))
    assert [(r["scope"], r["item"], r["value"]) for r in rows] == [("unit", "0", -1.0), ("overall", "*", -1.0)]
