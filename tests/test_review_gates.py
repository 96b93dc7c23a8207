"""Governance review: the diff with the approved version and the spec's gates catch the shortcut model.

Real audits of the demo CNNs: version 1 honest (approved), version 2 the Clever-Hans model trained with a colour
patch in the top-left corner, version 3 an honest model retrained with another seed.
"""

import json
from pathlib import Path

import jsonschema
import pyarrow.parquet as pq
import pytest
import yaml
from chromium import open_in_chromium
from conftest import DEMO_CLASSES, demo_cnn_spec
from test_html_report import ALL_SECTIONS, assert_clean, assert_self_contained
from test_model_card import CARD, assert_the_approved_card_parses_back, assert_the_shortcut_card_names_its_failed_gates
from typer.testing import CliRunner

from data_contracts import conform
from flows.cli import app
from interp_audit import report
from interp_audit.verdict import SCHEMA_PATH
from interp_ops.demo_models import DEMO_INPUT

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]
runner = CliRunner()

DEMO_SPEC = Path(__file__).resolve().parent.parent / "deployments" / "specs" / "shapes-registry-demo.yaml"


def cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, " ".join(result.output.split())


@pytest.fixture(scope="module")
def retrained_honest(tmp_path_factory):
    """The honest demo CNN trained again with another seed (shipped; trained here only when the code changed)."""
    from shipped_models import RESEEDED, copy_shipped

    from interp_ops.demo_models import train_demo_model

    return train_demo_model("honest", copy_shipped(tmp_path_factory.mktemp("retrained"), RESEEDED), seed=RESEEDED)


def demo_spec(tmp_path, weights, version: str) -> Path:
    """`make demo`'s spec, gates included, with each version as a torch model and the methods made smaller."""
    spec = yaml.safe_load(DEMO_SPEC.read_text())
    model = spec.pop("model")
    # its model is the demo CNN as demo_cnn_spec writes it (range [0, 1] is the default)
    assert model["name"] == "shapes-cnn" and model["input"] == {**DEMO_INPUT, "class_names": DEMO_CLASSES}, model
    data = spec.pop("data").replace("n=64", "n=16")  # the same patched scenes for every version
    ops = spec.pop("ops")
    ops["lime"].update(stability_seeds=1)
    ops["activation_max"].update(units="first:16", steps=16, exemplars=2)
    ops["dissection"].update(baseline="none")
    spec["contracts"].pop("actmax.min_robustness")  # 16 steps make rough renders: not what this test is about
    spec.pop("report")  # the store: tmp_path / "reports"
    spec["card"] = CARD  # what the model card's intended-use section shows
    return demo_cnn_spec(tmp_path, weights, version, data, ops, model["layers"], **spec)


def gates_of(store, version: str) -> dict:
    (run_id,) = report.list_runs(store, version=version).run_id
    rows = report.load_table(store, "gate_results", run_id=run_id)
    return {row.gate: row for row in rows.itertuples()}


def agreement(store, version: str) -> float:
    (run_id,) = report.list_runs(store, version=version).run_id
    diffs = report.load_table(store, "version_diffs", run_id=run_id)
    overall = diffs[(diffs.metric == "topk_jaccard") & (diffs.scope == "overall")]
    assert overall.baseline_version.tolist() == ["1"] and overall.baseline_basis.tolist() == ["approved"]
    return float(overall.value.iloc[0])


def test_diff_and_gates_flag_the_shortcut_version_and_pass_a_retrained_honest_one(tmp_path, trained, retrained_honest):
    store = tmp_path / "reports"
    code, output = cli("run", demo_spec(tmp_path, trained["honest"].weights_path, "1"))
    assert code == 0, output
    v1 = gates_of(store, "1")
    assert v1["corner-shortcut"].outcome == "passed" and v1["shape-detectors"].outcome == "passed"
    assert v1["agrees-with-approved"].outcome == "skipped"  # nothing approved yet: not passed, not failed
    (v1_run,) = report.list_runs(store, version="1").run_id
    code, output = cli("verdict", "shapes-cnn", "1", "--require", "approved", "--store", store)
    assert code == 1 and "awaiting review" in output, output  # passed, but nobody signed it off yet
    assert cli("review", v1_run, "--approve", "--reviewer", "ada", "--store", store)[0] == 0
    code, output = cli("verdict", "shapes-cnn", "1", "--require", "approved", "--store", store)
    assert code == 0 and "approved its tables" in output, output

    code, output = cli("run", demo_spec(tmp_path, trained["shortcut"].weights_path, "2"))
    assert code == 1 and "failed_gates (corner-shortcut, agrees-with-approved, shape-detectors)" in output, output
    v2 = gates_of(store, "2")
    assert v2["corner-shortcut"].outcome == "failed" and v2["corner-shortcut"].value > 0.15
    assert v2["agrees-with-approved"].outcome == "failed"
    (v2_run,) = report.list_runs(store, version="2").run_id
    assert_the_approved_card_parses_back(store, v1_run, tmp_path)
    assert_the_shortcut_card_names_its_failed_gates(store, v1_run, v2_run)

    code, output = cli("run", demo_spec(tmp_path, retrained_honest.weights_path, "3"))
    assert code == 0, output
    v3 = gates_of(store, "3")
    assert {gate.outcome for gate in v3.values()} == {"passed"}

    # the ground truth: two honest models agree with each other far more than the shortcut model agrees with either
    shortcut, retrained = agreement(store, "2"), agreement(store, "3")
    methods = report.load_table(store, "version_diffs").method.unique()
    assert set(methods) == {"lime", "dissection", "activation_max", "ablation"}
    assert shortcut < 0.3 and retrained > shortcut + 0.15, (shortcut, retrained)
    assert v1["corner-shortcut"].value < 0.05 and v3["corner-shortcut"].value < 0.05

    assert report.list_runs(store).set_index("model_version").status.to_dict() == {
        "1": "passed",
        "2": "failed_gates",
        "3": "passed",
    }
    code, output = cli("report", "show", report.list_runs(store, version="2").run_id.iloc[0], "--store", store)
    assert "gate corner-shortcut: failed" in output and "compared with v1 (approved run" in output, output
    # report diff reads back what the audit recorded against the approved version: nothing is written twice
    files = sorted((store / "version_diffs").rglob("*.parquet"))
    code, output = cli("report", "diff", "shapes-cnn", "1", "2", "--store", store)
    assert code == 0 and f"LIME top-k agreement {shortcut:.2f}" in output, output
    assert sorted((store / "version_diffs").rglob("*.parquet")) == files
    # a pair the audits did not compare is computed once, appended in a file of its own, then read back
    code, output = cli("report", "diff", "shapes-cnn", "2", "3", "--store", store)
    assert code == 0 and "LIME top-k agreement" in output, output
    assert len(sorted((store / "version_diffs").rglob("*.parquet"))) == len(files) + 1
    assert cli("report", "diff", "shapes-cnn", "2", "3", "--store", store)[1] == output
    assert len(sorted((store / "version_diffs").rglob("*.parquet"))) == len(files) + 1

    # a promotion job reads the verdicts: v2 is held back by its gates (JSON as docs/verdict.schema.json says), and
    # an approved v3 whose published tables change afterwards is no longer cleared
    verdict = promotion_check(store, "2")
    assert not verdict.cleared and verdict.reason.startswith("failed gates: corner-shortcut (lime.region_share = ")
    code, output = cli("verdict", "shapes-cnn", "2", "--format", "json", "--store", store)
    assert code == 1 and json.loads(output) == json.loads(verdict.model_dump_json()), output
    jsonschema.validate(json.loads(output), json.loads(SCHEMA_PATH.read_text()))
    (v3_run,) = report.list_runs(store, version="3").run_id
    assert cli("review", v3_run, "--approve", "--reviewer", "ada", "--store", store)[0] == 0
    assert cli("verdict", "shapes-cnn", "3", "--require", "approved", "--store", store)[0] == 0
    (predictions,) = (store / "predictions" / "model=shapes-cnn" / "version=3").glob("*.parquet")
    rows = pq.read_table(predictions).to_pylist()
    rows[0]["correct"] = not rows[0]["correct"]
    pq.write_table(conform("predictions", rows), predictions)
    code, output = cli("verdict", "shapes-cnn", "3", "--require", "approved", "--store", store)
    assert code == 1 and "tables changed since the approval by ada" in output, output

    # the reviewer's document of version 2 shows the verdict, the failed gates and the diff with approved v1
    html = tmp_path / "v2.html"
    assert (
        cli("report", "html", report.list_runs(store, version="2").run_id.iloc[0], "--store", store, "-o", html)[0] == 0
    )
    assert_self_contained(html.read_text(encoding="utf-8"))
    page = open_in_chromium(html)
    assert_clean(page)
    assert page.sections == ALL_SECTIONS, page.sections  # gates, a baseline and every method: every section
    assert "failed_gates" in page.text and "corner-shortcut" in page.text and "approved" in page.text


def promotion_check(store, version: str):
    """The verdict as a task of another flow (a promotion pipeline's), on the session's Prefect server."""
    from prefect import flow

    from tasks.review import check_verdict

    @flow(name="promote")
    def promote():
        return check_verdict(str(store), "shapes-cnn", version)

    return promote()


def sign_off_spec(tmp_path, weights, timeout_seconds: int) -> Path:
    return demo_cnn_spec(
        tmp_path, weights, "1", "builtin:shapes?split=val&n=4", {}, [], class_names=None, name="sign-off",
        review={"wait_for_sign_off": True, "timeout_seconds": timeout_seconds},
    )  # fmt: skip


def run_in_thread(spec) -> tuple:
    """The audit flow in a thread (as a worker would run it), so that this test can act as the reviewer."""
    import threading

    from flows.audit import audit

    outcome = {}

    def run():
        try:
            outcome["summary"] = audit(spec_path=str(spec))
        except Exception as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def paused_run(store, thread, timeout: float = 120) -> str:
    import time
    from uuid import UUID

    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and thread.is_alive():
        runs = report.list_runs(store)
        if len(runs):
            with get_client(sync_client=True) as client:
                if client.read_flow_run(UUID(runs.run_id.iloc[0])).state.is_paused():
                    return runs.run_id.iloc[0]
        time.sleep(0.5)
    raise AssertionError("the audit never paused for its sign-off")


def test_an_audit_waits_for_its_sign_off_and_the_reviewer_resumes_it(tmp_path, trained):
    store = tmp_path / "reports"
    thread, outcome = run_in_thread(sign_off_spec(tmp_path, trained["honest"].weights_path, 120))
    run_id = paused_run(store, thread)
    assert report.load_table(store, "reviews").empty  # published, not yet signed off
    code, output = cli(
        "review", run_id[:8], "--approve", "--reviewer", "ada", "--comment", "looks right", "--store", store
    )
    assert code == 0 and "handed to its audit" in output, output
    thread.join(120)
    assert outcome["summary"]["review"] == "approved", outcome
    (review,) = report.load_table(store, "reviews").itertuples()  # recorded once, by the resumed flow
    assert (review.reviewer, review.decision, review.comment) == ("ada", "approved", "looks right")
    assert review.tables_sha256 == report.review_state(store, report.find_run(store, run_id))[1]
    (card,) = report.load_table(store, "model_cards").itertuples()  # the approval's model card, stored by the flow
    assert (card.run_id, card.review_id, card.tables_sha256) == (run_id, review.review_id, review.tables_sha256)


def test_an_audit_nobody_signs_off_fails_and_keeps_its_report(tmp_path, trained):
    store = tmp_path / "reports"
    thread, outcome = run_in_thread(sign_off_spec(tmp_path, trained["honest"].weights_path, 3))
    thread.join(120)
    assert "no sign-off within 3 s" in str(outcome.get("error")), outcome
    assert report.list_runs(store).status.tolist() == ["passed"] and report.load_table(store, "reviews").empty


def test_waiting_for_a_sign_off_needs_a_server_a_reviewer_can_reach(tmp_path, trained):
    from conftest import store_is_empty
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        code, output = cli("run", sign_off_spec(tmp_path, trained["honest"].weights_path, 60))
    assert code == 2 and "review.wait_for_sign_off" in output and "PREFECT_API_URL" in output, output
    assert store_is_empty(tmp_path / "reports")
