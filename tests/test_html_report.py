"""`interp-audit report html`: one self-contained page per run, escaped, and clean in a real headless Chromium."""

import datetime as dt
import io
import json
import re
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from chromium import open_in_chromium
from PIL import Image
from test_store import run_tables
from typer.testing import CliRunner

from data_contracts import conform
from flows.cli import app
from interp_audit import report
from interp_audit.html_report import fmt, render_html
from interp_audit.store import ReportStore

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent
ALL_SECTIONS = [
    "summary",
    "review",
    "gates",
    "diff",
    "parity",
    "contracts",
    "predictions",
    "lime",
    "activation_max",
    "dissection",
    "ablation",
    "reproducibility",
]
HOSTILE_CLASSES = ["<script>alert(1)</script>", "<img src=x onerror=alert(2)>", "tri&amp; \"angle\" 'q'"]


def cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, " ".join(result.output.split())


class _Links(HTMLParser):
    """Every URL the page's real markup refers to: src/href/srcset/action attributes and CSS url(...)."""

    def __init__(self):
        super().__init__()
        self.urls, self.tags = [], []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self._in_style = tag == "style"
        for name, value in attrs:
            if name in ("src", "href", "srcset", "action", "formaction", "poster", "data", "background"):
                self.urls.append(value or "")
            if name == "style":
                self.urls += re.findall(r"url\(\s*['\"]?([^'\")]*)", value or "")

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.urls += re.findall(r"url\(\s*['\"]?([^'\")]*)", data)


def assert_self_contained(html: str) -> _Links:
    links = _Links()
    links.feed(html)
    outside = [url for url in links.urls if not (url.startswith("data:image/png;base64,") or url.startswith("#"))]
    assert not outside, outside[:5]
    # the same, as a raw text check: no absolute or protocol-relative URL in any src=, href= or url(
    assert not re.search(r"""(?:\b(?:src|href)\s*=\s*["']?|url\(\s*["']?)\s*(?:[a-z][a-z0-9+.-]*:)?//""", html, re.I)
    assert "<script" not in html.lower() and "javascript:" not in html.lower()
    assert "script" not in links.tags and "iframe" not in links.tags and "link" not in links.tags
    assert (
        '<meta http-equiv="Content-Security-Policy" content="default-src &#39;none&#39;; img-src data:; '
        'style-src &#39;unsafe-inline&#39;">' in html
    )
    assert '<meta name="referrer" content="no-referrer">' in html
    return links


def assert_clean(page):
    assert page.console_errors == [] and page.page_errors == [], (page.console_errors, page.page_errors)
    assert page.requests == [], page.requests
    assert page.dialogs == [], page.dialogs


def publish(root: Path, run_id: str, model: str, tables: dict) -> ReportStore:
    store = ReportStore.open(root)
    store.stage(run_id, model, "1", {name: conform(name, rows) for name, rows in tables.items()})
    store.publish(run_id, model, "1")
    return store


# --------------------------------------------------------------------------------------------- a real audit


@pytest.fixture(scope="module")
def audited(tmp_path_factory, trained, prefect_server):
    """A small real audit of the demo CNN with every method, its class names hostile HTML; its report html."""
    root = tmp_path_factory.mktemp("html-report")
    spec = yaml.safe_load((ROOT / "deployments/specs/shapes-demo.yaml").read_text())
    spec["model"]["weights"] = str(trained["honest"].weights_path)
    spec["model"]["input"]["class_names"] = HOSTILE_CLASSES
    spec["data"] = "builtin:shapes?split=val&n=16"
    spec["ops"]["lime"].update(samples=4, num_samples=300, stability_seeds=2, heldout_samples=50)
    spec["ops"]["activation_max"].update(units="first:4", steps=32)
    spec["ops"]["dissection"]["concepts"] = "builtin:concepts?n=100"
    spec["contracts"] = {"onnx.max_abs_diff": 1.0e-4}
    spec["report"]["store"] = str(root / "reports")
    spec.pop("schedule", None)
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    started = time.perf_counter()
    code, output = cli("run", path)
    assert code == 0, output
    run_id = report.list_runs(root / "reports").run_id.iloc[0]
    html_path = root / "out" / "report.html"
    code, output = cli("report", "html", run_id[:8], "--store", root / "reports", "-o", html_path)
    assert code == 0 and "wrote" in output and re.search(r"\((\d+\.\d+) (kB|MB)\)", output), output
    size = html_path.stat().st_size
    print(f"\nreal run: audit + report in {time.perf_counter() - started:.1f} s; report.html is {size:,} bytes")
    assert size < 5_000_000
    return {"root": root, "run_id": run_id, "path": html_path, "html": html_path.read_text(encoding="utf-8")}


@pytest.fixture(scope="module")
def real_page(audited):
    return open_in_chromium(audited["path"])


@pytest.mark.slow
def test_the_report_of_a_real_run_opens_cleanly_offline(audited, real_page):
    assert_clean(real_page)
    # every section but the two a first audit without gates cannot have (no gates in the spec, no baseline version)
    assert real_page.sections == [s for s in ALL_SECTIONS if s not in ("gates", "diff")], real_page.sections
    assert_self_contained(audited["html"])
    text = real_page.text
    assert "passed" in text and audited["run_id"] in text and "not reviewed yet" in text
    assert "features.12 unit 3" in text and "features.12 unit 4" not in text  # units first:4
    # the images are real PNGs, at most 4 exemplars per unit: 4 LIME overlays + 4 units x (render + 4)
    images = re.findall(r'<img src="data:image/png;base64,', audited["html"])
    assert len(images) == 4 + 4 * (1 + 4), len(images)

    shot = Image.open(io.BytesIO(real_page.screenshot))
    assert shot.format == "PNG" and shot.width == real_page.viewport["width"]
    assert shot.height > 2 * real_page.viewport["height"], shot.size
    pixels = np.asarray(shot.convert("L"), dtype=float)
    assert pixels.std() > 20, pixels.std()  # not blank: text, tables and images were painted
    dark = (pixels < 128).mean()
    assert 0.01 < dark < 0.6, dark


@pytest.mark.slow
def test_hostile_class_names_are_shown_as_text(audited, real_page):
    html = audited["html"]
    assert real_page.dialogs == [] and real_page.page_errors == []
    for name in HOSTILE_CLASSES:
        assert name in real_page.text, name  # shown literally, in the predictions and LIME cards
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert(1)" not in html
    assert "&lt;img src=x onerror=alert(2)&gt;" in html and "<img src=x" not in html
    assert "tri&amp;amp; &#34;angle&#34; &#39;q&#39;" in html


# ------------------------------------------------------------------------------------- hand-published runs

HOSTILE = {
    "audit": "<script>alert('audit')</script>",
    "model": "<img src=x onerror=alert(3)>",
    "reviewer": "<svg onload=alert(4)>",
    "comment": '</div></section><script>alert(5)</script><a href="https://evil.example/">click</a>',
    "feature": "<b onmouseover=alert(6)>age</b>",
    "item": '<iframe src="//evil.example"></iframe>',
}


def hostile_tables(run_id: str) -> dict:
    tables = {name: table.to_pylist() for name, table in run_tables(run_id).items()}
    tables["audit_runs"][0].update(
        audit_name=HOSTILE["audit"],
        model_name=HOSTILE["model"],
        status="failed_gates",
        spec_text=f"name: x\n# {HOSTILE['comment']}\n",
        data_uri="file:///<script>alert(7)</script>",
        package_versions=json.dumps({"<script>alert(8)</script>": "1.0", "torch": "2.13.0"}),
    )
    tables["onnx_parity"][0]["output"] = HOSTILE["item"]
    tables["predictions"] = [
        {
            "run_id": run_id,
            "sample_id": HOSTILE["item"],
            "label": 0,
            "label_name": HOSTILE["audit"],
            "predicted": 0,
            "predicted_name": HOSTILE["audit"],
            "probability": 0.9,
            "correct": True,
        }
    ]
    tables["contract_results"] = [
        {
            "run_id": run_id,
            "table_name": "predictions",
            "expectation": "expect_column_values_to_be_between",
            "column": "probability",
            "success": False,
            "observed_value": HOSTILE["comment"],
            "details": json.dumps({"max_value": 1}),
        }
    ]
    tables["gate_results"] = [
        {
            "run_id": run_id,
            "gate": HOSTILE["audit"],
            "metric": "lime.region_share",
            "params": json.dumps(HOSTILE),
            "value": 0.5,
            "min": 0.8,
            "max": None,
            "outcome": "failed",
            "detail": HOSTILE["comment"],
        }
    ]
    tables["lime_explanations"] = [
        {
            "run_id": run_id,
            "sample_id": HOSTILE["item"],
            "label": 0,
            "label_name": HOSTILE["model"],
            "probability": 0.9,
            "intercept": 0.1,
            "local_prediction": 0.85,
            "prediction_gap": 0.05,
            "r2_in_sample": 0.9,
            "r2_heldout": 0.8,
            "stability": None,
            "deletion_auc": 0.2,
            "insertion_auc": 0.8,
            "faithfulness_correlation": 0.6,
            "kernel_width": 1.0,
            "num_samples": 100,
            "num_features": 3,
            "top_features": [HOSTILE["feature"], "bmi"],
            "overlay_png": None,
            "height": None,
            "width": None,
            "segments": None,
        }
    ]
    tables["lime_attributions"] = [
        {
            "run_id": run_id,
            "sample_id": HOSTILE["item"],
            "label": 0,
            "feature": feature,
            "weight": weight,
            "rank": rank,
            "segment": None,
            "area_fraction": None,
            "bin": bin_,
        }
        for feature, weight, rank, bin_ in (
            (HOSTILE["feature"], 0.4, 1, "<u>0.2 < age <= 0.5</u>"),
            ("bmi", -0.2, 2, "bmi > 30"),
            ("hidden-third", 0.01, 3, None),
        )
    ]
    return tables


def test_hostile_names_from_tables_and_reviews_are_escaped_in_chromium(tmp_path):
    store = publish(tmp_path / "reports", "r1", HOSTILE["model"], hostile_tables("r1"))
    report.review_run(store, "r1", approve=False, reviewer=HOSTILE["reviewer"], comment=HOSTILE["comment"])
    path = tmp_path / "hostile.html"
    code, output = cli("report", "html", "r1", "--store", tmp_path / "reports", "-o", path)
    assert code == 0, output
    html = path.read_text(encoding="utf-8")
    assert_self_contained(html)
    for raw in ("<script>alert(", "<img src=x", "<svg", "<iframe", "<b onmouseover", "<u>0.2", 'evil.example/">'):
        assert raw not in html, raw
    assert "&lt;svg onload=alert(4)&gt;" in html and "&lt;img src=x onerror=alert(3)&gt;" in html

    page = open_in_chromium(path)
    assert_clean(page)
    assert page.sections == [
        "summary",
        "review",
        "gates",
        "parity",
        "contracts",
        "predictions",
        "lime",
        "reproducibility",
    ], page.sections
    for value in (
        HOSTILE["audit"],
        HOSTILE["model"],
        HOSTILE["reviewer"],
        HOSTILE["comment"],
        HOSTILE["feature"],
        HOSTILE["item"],
        "<u>0.2 < age <= 0.5</u>",
        "failed_gates",
    ):
        assert value in page.text, value
    assert "hidden-third" not in page.text  # rank 3 > top_k (2 top features)
    assert "0 / 1 expectations met" in " ".join(page.text.split())


def test_gates_and_version_diffs_are_rendered(tmp_path):
    tables = {name: table.to_pylist() for name, table in run_tables("r2", version="2").items()}
    tables["audit_runs"][0]["status"] = "failed_gates"
    tables["gate_results"] = [
        {
            "run_id": "r2",
            "gate": g,
            "metric": m,
            "params": json.dumps({"metric": m}),
            "value": v,
            "min": lo,
            "max": None,
            "outcome": o,
            "detail": d,
        }
        for g, m, v, lo, o, d in (
            ("detectors", "dissection.detectors", 12.0, 10.0, "passed", "features.12: 12"),
            ("region", "lime.region_share", 0.123456, 0.5, "failed", "corner share 0.123"),
            ("drift", "diff.topk_jaccard", None, 0.5, "skipped", "no baseline run"),
        )
    ]
    base = {
        "run_id": "r2",
        "baseline_run_id": "r1-baseline",
        "baseline_version": "1",
        "baseline_basis": "approved",
        "category": None,
        "old_value": None,
        "new_value": None,
    }
    diffs = [
        {
            **base,
            "method": "lime",
            "metric": "topk_jaccard",
            "scope": "overall",
            "layer": "output",
            "item": "*",
            "value": 0.4567,
        },
        {
            **base,
            "method": "lime",
            "metric": "attribution_shift",
            "scope": "overall",
            "layer": "output",
            "item": "*",
            "value": 0.2345,
        },
        {
            **base,
            "method": "lime",
            "metric": "topk_jaccard",
            "scope": "sample",
            "layer": "output",
            "item": "s-007",
            "value": 0.25,
        },
        {
            **base,
            "method": "lime",
            "metric": "attribution_shift",
            "scope": "sample",
            "layer": "output",
            "item": "s-007",
            "value": 0.5,
        },
        {
            **base,
            "method": "dissection",
            "metric": "detectors",
            "scope": "overall",
            "layer": "features.12",
            "item": "*",
            "old_value": 40.0,
            "new_value": 45.0,
            "value": 5.0,
        },
    ]
    for scope, item, category, old, new, gained, lost in (
        ("category", "object", "object", 30, 38, 9, 1),
        ("category", "color", "color", 10, 7, 0, 3),
        ("concept", "red-circle", "object", 2, 5, 3, 0),
        ("concept", "steady-concept", "object", 4, 4, 0, 0),
    ):
        cell = {
            **base,
            "method": "dissection",
            "scope": scope,
            "layer": "features.12",
            "item": item,
            "category": category,
        }
        diffs += [
            {
                **cell,
                "metric": "detectors",
                "old_value": float(old),
                "new_value": float(new),
                "value": float(new - old),
            },
            {**cell, "metric": "detectors_gained", "value": float(gained)},
            {**cell, "metric": "detectors_lost", "value": float(lost)},
        ]
    for unit in range(12):  # units 5 and 6 change least, 0 and 11 most
        change = 0.1 * (unit - 5.5)
        diffs.append(
            {
                **base,
                "method": "activation_max",
                "metric": "ratio",
                "scope": "unit",
                "layer": "features.12",
                "item": str(unit),
                "old_value": 2.0,
                "new_value": 2.0 + change,
                "value": change,
            }
        )
    diffs.append(
        {
            **base,
            "method": "activation_max",
            "metric": "ratio",
            "scope": "overall",
            "layer": "features.12",
            "item": "*",
            "old_value": 2.0,
            "new_value": 1.95,
            "value": -0.05,
        }
    )
    tables["version_diffs"] = diffs
    store = publish(tmp_path / "reports", "r2", "m", tables)

    html = render_html(store, "r2")
    assert_self_contained(html)
    # the failed gate's row is red (class bad); the passed and skipped ones are not
    rows = {
        re.search(r"<td>(\w+)</td>", row).group(1): cls
        for cls, row in re.findall(r'<tr class="([^"]*)">\s*(<td>.*?)</tr>', html, re.S)
        if "<td>" in row
    }
    assert rows["region"] == "bad" and rows["detectors"] == "" and rows["drift"] == "skipped", rows
    path = tmp_path / "diff.html"
    path.write_text(html, encoding="utf-8")
    page = open_in_chromium(path)
    assert_clean(page)
    assert page.sections == ["summary", "review", "gates", "diff", "parity", "reproducibility"], page.sections
    text = " ".join(page.text.split())
    assert "1 of 3 gates passed, 1 failed" in text and "0.123" in text and "0.123456" not in text
    assert "against v1 (baseline: approved; run r1-baseline)" in text
    assert "mean top-k Jaccard 0.457" in text and "mean attribution shift 0.234" in text
    assert "features.12: 40 → 45 detectors" in text
    assert "features.12 object 30 → 38 9 1" in text and "features.12 color 10 → 7 0 3" in text
    assert "red-circle" in html and "steady-concept" not in html  # only concepts that gained or lost detectors
    assert "s-007" in html  # per-sample LIME rows (inside a <details>)
    assert "features.12: mean ratio 2 → 1.95 (change -0.05)" in text
    shown = re.findall(r'<tr><td>features\.12</td><td class="n">(\d+)</td>', html)
    assert sorted(map(int, shown)) == [0, 1, 2, 3, 4, 7, 8, 9, 10, 11], shown  # top 10 by |change|; 5, 6 left out
    assert set(shown[:2]) == {"0", "11"}, shown  # largest |change| first
    assert "10 of 12 units with the largest |change|" in text


def test_reviews_say_whether_the_tables_still_match(tmp_path):
    store = publish(tmp_path, "r1", "m", {name: t.to_pylist() for name, t in run_tables("r1").items()})
    path = tmp_path / "r1.html"
    assert cli("report", "html", "r1", "--store", tmp_path, "-o", path)[0] == 0
    text = " ".join(path.read_text().split())
    assert "not reviewed yet" in text and "interp-audit review r1 --approve|--reject --reviewer NAME" in text

    report.review_run(store, "r1", approve=True, reviewer="ada", comment="fine")
    assert cli("report", "html", "r1", "--store", tmp_path, "-o", path)[0] == 0
    html = path.read_text()
    assert "matches the current tables" in html and "DOES NOT MATCH" not in html and "ada" in html

    parity = tmp_path / "onnx_parity" / "model=m" / "version=1" / "r1.parquet"
    rows = pq.read_table(parity).to_pylist()
    rows[0]["max_abs_diff"] = 0.5  # someone quietly rewrites a published number after the approval
    pq.write_table(conform("onnx_parity", rows), parity)
    assert cli("report", "html", "r1", "--store", tmp_path, "-o", path)[0] == 0
    page = open_in_chromium(path)
    assert_clean(page)
    assert "DOES NOT MATCH the current tables (changed since approval)" in page.text
    assert "matches the current tables" not in page.text
    assert page.sections == ["summary", "review", "parity", "reproducibility"], page.sections


def test_an_unknown_run_is_refused_and_nothing_is_written(tmp_path, monkeypatch):
    publish(tmp_path / "reports", "r1", "m", {name: t.to_pylist() for name, t in run_tables("r1").items()})
    monkeypatch.chdir(tmp_path)
    code, output = cli("report", "html", "nope", "--store", tmp_path / "reports", "-o", tmp_path / "x.html")
    assert code == 2 and "no run with id 'nope'" in output, output
    code, output = cli("report", "html", "nope", "--store", tmp_path / "reports")
    assert code == 2, output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports"]
    # the default file name is the full run id, in the current folder
    code, output = cli("report", "html", "r", "--store", tmp_path / "reports")
    assert code == 0 and (tmp_path / "r1.html").is_file(), output


def test_the_browser_check_sees_requests_dialogs_and_errors(tmp_path):
    """The Chromium checks above are not vacuous: a page that calls out, alerts and throws is caught."""
    path = tmp_path / "bad.html"
    path.write_text(
        '<!DOCTYPE html><html><body><section id="s"><h2>s</h2><img src="http://127.0.0.1:9/x.png">'
        '</section><section id="hidden" style="display:none">h</section>'
        '<script>alert(1); console.error("logged"); throw new Error("boom")</script></body></html>'
    )
    page = open_in_chromium(path)
    assert page.requests == ["http://127.0.0.1:9/x.png"]
    assert page.dialogs == ["alert: 1"]
    assert "logged" in page.console_errors and any("boom" in error for error in page.page_errors)
    assert page.sections == ["s"]


@pytest.mark.parametrize(
    "value, text",
    [
        (None, "\u2013"),
        (float("nan"), "\u2013"),
        (0.123456, "0.123"),
        (1.5e-7, "1.5e-07"),
        (12345.6, "12,346"),
        (3, "3"),
        (np.int64(7), "7"),
        (np.float32(0.25), "0.25"),
        (True, "yes"),
        (np.bool_(False), "no"),
        (np.float64("nan"), "\u2013"),
        ("<b>", "<b>"),
    ],
)
def test_numbers_are_formatted_to_three_significant_digits(value, text):
    assert fmt(value) == text


def test_a_published_run_renders_without_the_network_or_prefect(tmp_path):
    """render_html reads only the store: a run with just its provenance row renders its fixed sections."""
    publish(tmp_path, "r9", "m", {"audit_runs": run_tables("r9")["audit_runs"].to_pylist()})
    html = render_html(tmp_path, "r9")
    assert_self_contained(html)
    ids = re.findall(r'<section id="([^"]+)"', html)
    assert ids == ["summary", "review", "reproducibility"]
    started = dt.datetime(2026, 11, 25, tzinfo=dt.UTC)
    assert f"{started:%Y-%m-%d %H:%M:%S} UTC" in html
