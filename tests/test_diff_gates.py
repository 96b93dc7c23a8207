"""Version diffs, gates and the choice of baseline, on tables whose answers are known."""

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from test_lime_ops import SIZE, fast_settings, planted_predict, to_input
from test_store import run_tables

from data_contracts import conform
from interp_audit import report
from interp_audit.diff import actmax_diff, attribution_shift, dissection_diff, lime_diff
from interp_audit.gates import Baseline, evaluate_gates, region_mask, region_share
from interp_audit.spec import DetectorsGate, DiffGate, LimeRegionGate, RegionSpec
from interp_audit.store import ReportStore
from interp_ops.lime import ImageLime, Segmentation
from tasks.lime import report_rows


def frames(**tables):
    return lambda name: tables.get(name, pd.DataFrame())


def test_region_share_spreads_each_superpixel_weight_over_its_pixels():
    segments = np.array([[7, 7, -2, -2]] * 4)  # left half superpixel 7, right half superpixel -2
    region = region_mask(RegionSpec(boxes=[(0, 0, 0.25, 1)]), 4, 4)  # the first column
    assert region.sum() == 4 and region[:, 0].all()
    # 7 (weight 3) has half its pixels in the region, -2 (weight 1) none; negative weights do not count
    assert region_share(segments, {7: 3.0, -2: 1.0}, region) == pytest.approx(1.5 / 4)
    assert region_share(segments, {7: 3.0, -2: -5.0}, region) == pytest.approx(0.5)
    assert region_share(segments, {7: -1.0, -2: 0.0}, region) is None
    corners = region_mask(RegionSpec(corners=0.25), 8, 8)
    assert corners.sum() == 16 and corners[0, 0] and corners[7, 7] and not corners[4, 4]


def test_attribution_shift_is_the_total_variation_of_the_weight_shares():
    assert attribution_shift({"a": 1, "b": 1}, {"a": 2, "b": 2}) == 0
    assert attribution_shift({"a": 1}, {"b": -3}) == 1
    assert attribution_shift({"a": 3, "b": 1}, {"a": 1, "b": 1}) == pytest.approx(0.25)


SAME = np.array([1, 2, 3, 3])  # a 2x2 map of superpixels 1, 2 and 3


def explanation(sample, top, weights, segments=SAME):
    return (
        {"sample_id": sample, "label": 0, "top_features": top, "height": 2, "width": 2, "segments": segments},
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
        explanation("s2", ["1", "2"], {"1": 1, "2": 1}, segments=np.array([1, 2, 2, 3])),
    )
    rows = {(r["metric"], r["scope"], r["item"]): r["value"] for r in lime_diff(old, new)}
    assert rows[("topk_jaccard", "sample", "s1")] == pytest.approx(1 / 3)
    assert rows[("attribution_shift", "sample", "s1")] == pytest.approx(2 / 3)
    assert ("topk_jaccard", "sample", "s2") not in rows  # another segmentation: not comparable
    assert rows[("topk_jaccard", "overall", "*")] == pytest.approx(1 / 3)


def test_lime_diff_compares_tabular_rows_but_not_image_rows_without_their_map():
    def rows(sample, overlay):
        (row, weights) = explanation(sample, ["1", "2"], {"1": 2, "2": 1}, segments=None)
        return {**row, "height": None, "width": None, "overlay_png": overlay}, weights

    old = lime_frames(rows("tabular", None), rows("image", b"\x89PNG"))  # an image run published before maps
    new = lime_frames(rows("tabular", None), rows("image", b"\x89PNG"))
    samples = {r["item"] for r in lime_diff(old, new) if r["scope"] == "sample"}
    assert samples == {"tabular"}


@dataclass(frozen=True)
class Bands(Segmentation):
    """Vertical bands of superpixels 5, 17 and 900, the second starting at column `second`, the third at 34."""

    second: int = 20

    def __call__(self, image):
        bands = np.full(image.shape[:2], 900, dtype=np.int64)
        bands[:, :34] = 17
        bands[:, : self.second] = 5
        return bands


def publish_planted_lime(store, run_id, version, segmentation):
    """A published run whose LIME tables are the planted model's, explained on two images by the real op."""
    images = np.random.default_rng(0).uniform(0.3, 1.0, size=(2, SIZE, SIZE, 3)).astype(np.float32)
    result = ImageLime(planted_predict).attribute(
        to_input(images), images, [[1], [1]], **fast_settings(segmentation=segmentation)
    )
    explanations, attributions = report_rows(result, ["s0", "s1"], None)
    tables = run_tables(run_id, version) | {
        name: conform(name, [{"run_id": run_id, **row} for row in rows])
        for name, rows in (("lime_explanations", explanations), ("lime_attributions", attributions))
    }
    store.stage(run_id, "m", version, tables)
    store.publish(run_id, "m", version)
    return report.run_tables(store, run_id)


def test_region_share_and_lime_diff_read_the_integer_segment_map_back_from_parquet(tmp_path):
    store = ReportStore.open(tmp_path)
    run = publish_planted_lime(store, "r1", "1", Bands())
    explanations, attributions = run("lime_explanations"), run("lime_attributions")
    for row in explanations.itertuples():  # the map comes back pixel for pixel, with the attributions' ids
        segments = np.asarray(row.segments).reshape(row.height, row.width)
        assert np.array_equal(segments, Bands()(np.zeros((SIZE, SIZE, 3))))
        mine = attributions[(attributions.sample_id == row.sample_id) & (attributions.label == row.label)]
        assert sorted(mine.segment) == [5, 17, 900]

    # the left quarter holds the first 12 columns of band 5 (20 columns) and nothing of the others
    gate = LimeRegionGate(metric="lime.region_share", region=RegionSpec(boxes=[(0, 0, 0.25, 1)]), max=1)
    (verdict,) = evaluate_gates([gate], run, [], None)
    expected = []
    for _, weights in attributions.groupby("sample_id"):
        positive = weights.set_index("segment").weight.clip(lower=0)
        assert positive[5] > 0 and positive[17] > 0  # the planted pixels span bands 5 and 17
        expected.append(12 / 20 * positive[5] / positive.sum())
    assert verdict["value"] == pytest.approx(np.mean(expected)) and 0 < verdict["value"] < 12 / 20

    again = publish_planted_lime(store, "r2", "2", Bands())
    moved = publish_planted_lime(store, "r3", "3", Bands(second=24))  # same ids, other pixels
    compared = {(r["metric"], r["scope"], r["item"]): r["value"] for r in lime_diff(run, again)}
    assert compared[("topk_jaccard", "sample", "s0")] == 1 and compared[("topk_jaccard", "sample", "s1")] == 1
    assert lime_diff(run, moved) == []


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
