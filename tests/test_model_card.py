"""The model card of an audited version: Hugging Face's format (YAML metadata, Markdown sections), written offline
from the run's published tables, parsed back; stored beside the run when an approval is recorded.

The tests here use a small published run (escaping, storage, bad input); the cards of real audits of the demo CNNs
(version 1 honest, approved; version 2 the shortcut model, whose gates fail; an approval inside Prefect) are checked
by test_review_gates.py with the functions at the end, on the runs it makes anyway.
"""

import hashlib
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import store_is_empty
from huggingface_hub import ModelCard
from test_store import run_tables
from typer.testing import CliRunner

from data_contracts import conform
from flows.cli import app
from interp_audit import report
from interp_audit.model_card import model_card
from interp_audit.store import ReportStore

runner = CliRunner()
SECTIONS = [
    "Model details",
    "Intended use and limitations",
    "Evaluation",
    "Interpretability findings",
    "Version diff",
    "Sign-offs",
    "Reproducibility",
]
CARD = {
    "owners": ["vision-team@example.com", "Ada Lovelace"],
    "intended_use": "Sorting flat-coloured shapes (circle, square, triangle) in synthetic test scenes.",
    "out_of_scope_uses": ["Photographs or hand drawings of shapes."],
    "known_limitations": ["Trained on 64x64 renders only; a coloured corner patch may sway it."],
}


def cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, " ".join(result.output.split())


@pytest.fixture
def offline(monkeypatch):
    """No connection can be opened: the card must render and parse back without the network."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a network connection was attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def sections(markdown: str) -> list[str]:
    return re.findall(r"^## (.+)$", markdown, flags=re.MULTILINE)


def prose(markdown: str) -> str:
    """The card's Markdown without its metadata block and without the spec's fenced code block."""
    body = markdown.split("\n---\n", 1)[1]
    return re.sub(r"^(`{3,})yaml\n.*?^\1$", "", body, flags=re.MULTILINE | re.DOTALL)


def assert_tables_whole(markdown: str) -> None:
    """Every Markdown table keeps its header's column count on every row: no value broke a row apart."""
    blocks, block = [], []
    for line in [*prose(markdown).splitlines(), ""]:
        if line.startswith("|"):
            block.append(line)
        elif block:
            blocks.append(block)
            block = []
    assert blocks
    for rows in blocks:
        widths = {len(re.split(r"(?<!\\)\|", row.strip())) for row in rows}
        assert len(widths) == 1, rows


# ------------------------------------------------------------------------------------- a small published run

RUN = "5c1d9e0a-7b2f-4e3a-9c8d-0f1e2d3c4b5a"


def published(root: Path, run_id: str = RUN, card: dict | None = None) -> ReportStore:
    tables = run_tables(run_id)
    if card is not None:
        runs = tables["audit_runs"].to_pylist()
        runs[0]["spec_text"] = yaml.safe_dump({"name": "a", "card": card})
        tables["audit_runs"] = conform("audit_runs", runs)
    store = ReportStore.open(root)
    store.stage(run_id, "m", "1", tables)
    store.publish(run_id, "m", "1")
    return store


def files_under(root: Path) -> dict:
    return {path: path.read_bytes() for path in root.rglob("*") if path.is_file()}


def test_values_from_specs_and_reviewers_cannot_break_the_card(tmp_path, offline):
    hostile = "a | b `code` <script>alert(1)</script>\nsecond line"
    store = published(tmp_path, card={**CARD, "owners": [hostile], "known_limitations": [hostile]})
    report.review_run(store, RUN, approve=False, reviewer=hostile, comment=hostile)
    markdown = str(model_card(store, RUN[:8]))
    assert sections(markdown) == SECTIONS
    assert "<script>" not in prose(markdown) and "&lt;script>" in prose(markdown)  # the spec's text is fenced
    assert "a \\| b \\`code\\`" in markdown and "second line" in markdown
    assert_tables_whole(markdown)
    assert CARD["intended_use"] in markdown and "**rejected** by a \\| b" in markdown
    parsed = ModelCard(markdown)
    assert parsed.data.interp_audit["review"] == "rejected" and parsed.data.interp_audit["approval"] is None


def test_approving_a_run_stores_its_card_once_in_a_file_of_its_own(tmp_path):
    # not offline: `review` first asks the Prefect API (where a test session set one) whether the run waits for it
    store = published(tmp_path)
    code, output = cli("review", RUN[:8], "--approve", "--reviewer", "ada", "--comment", "ok", "--store", tmp_path)
    assert code == 0 and "its model card is stored in model_cards" in output, output
    (review,) = report.load_table(tmp_path, "reviews").itertuples()
    (card,) = report.load_table(tmp_path, "model_cards", run_id=RUN).itertuples()
    assert card.card_sha256 == hashlib.sha256(card.card_markdown.encode()).hexdigest()
    assert (card.review_id, card.tables_sha256) == (review.review_id, review.tables_sha256)
    assert card.card_markdown == str(model_card(store, RUN))  # what `report card` writes while nothing changed
    stored = [m for m in store.manifests() if any(f.table == "model_cards" for f in m.files)]
    assert [(m.kind, m.commit_id, len(m.files)) for m in stored] == [("append", card.card_id, 1)]
    assert store.check().intact
    assert cli("review", RUN, "--reject", "--reviewer", "bob", "--store", tmp_path)[0] == 0
    assert len(report.load_table(tmp_path, "model_cards")) == 1  # a rejection stores no card


def test_report_card_refuses_bad_input_and_writes_nothing(tmp_path, monkeypatch):
    root, cwd = tmp_path / "store", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    published(root, RUN)
    published(root, RUN[:4] + "0" * 4 + RUN[8:])  # a second run whose id starts as the first one's does
    before = files_under(root)

    code, output = cli("report", "card", RUN[:4], "--store", root)
    assert code == 2 and f"2 runs with id '{RUN[:4]}'" in output, output
    code, output = cli("report", "card", RUN[:8], "--store", root, "-o", cwd / "nowhere" / "card.md")
    assert code == 2 and "the folder" in output and "nowhere' does not exist" in output, output
    assert not (cwd / "nowhere").exists()
    code, output = cli("report", "card", RUN[:8], "--store", tmp_path / "no-store")
    assert code == 2 and "does not exist" in output, output
    assert not any(cwd.iterdir()) and files_under(root) == before

    code, output = cli("report", "card", RUN[:8], "--store", root)  # the default name, in the current folder
    assert code == 0 and "wrote m-v1-card.md" in output, output
    assert ModelCard.load(cwd / "m-v1-card.md").data.interp_audit["run_id"] == RUN


def test_a_card_block_with_an_unknown_key_is_refused(gray_spec, tmp_path):
    spec = gray_spec(card={"owners": ["ada"], "intended_usage": "typo"})
    code, output = cli("validate", spec)
    assert code == 2 and "card.intended_usage: unknown key" in output, output
    code, output = cli("run", spec)
    assert code == 2 and "card.intended_usage: unknown key" in output, output
    assert store_is_empty(tmp_path / "reports")
    code, output = cli("validate", gray_spec(card=CARD))
    assert code == 0, output


def test_the_card_module_imports_no_prefect():
    code = "import sys, interp_audit.model_card; print('prefect' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ------------------------------------------------- checks of real demo audits (run by test_review_gates.py)


def assert_the_approved_card_parses_back(store, v1: str, tmp_path) -> None:
    """Version 1 of the review story (honest, with CARD as its card: block, approved by ada)."""
    path = tmp_path / "card.md"
    code, output = cli("report", "card", v1[:8], "--store", store, "-o", path)
    assert code == 0 and f"wrote {path}" in output, output
    card = ModelCard.load(path)  # a local file: nothing is fetched
    meta = card.data.to_dict()
    (review,) = report.load_table(store, "reviews", run_id=v1).itertuples()
    run = report.find_run(store, v1)
    assert meta["model_name"] == "shapes-cnn" and "interp-audit" in meta["tags"]
    assert meta["interp_audit"]["run_id"] == v1 and meta["interp_audit"]["status"] == "passed"
    assert meta["interp_audit"]["approval"] == {
        "reviewer": "ada",
        "reviewed_at": f"{review.reviewed_at:%Y-%m-%d %H:%M:%S} UTC",
        "review_id": review.review_id,
        "tables_sha256": review.tables_sha256,
        "matches_tables": True,
    }
    assert meta["interp_audit"]["spec_sha256"] == run["spec_sha256"]
    assert meta["interp_audit"]["weights_sha256"] == run["weights_sha256"]

    markdown = card.text
    assert sections(markdown) == SECTIONS
    assert_tables_whole(card.content)
    for text in (CARD["intended_use"], *CARD["out_of_scope_uses"], *CARD["known_limitations"], *CARD["owners"]):
        assert text in markdown
    assert "**approved** by ada" in markdown and f"`{review.tables_sha256}`" in markdown
    assert "matches the current tables" in markdown
    for method in ("### LIME", "### activation maximization", "### network dissection", "### unit ablation"):
        assert method in markdown
    assert "### Data contracts" in markdown and "unit(s) of `features.12` zeroed" in markdown
    assert "`lime.min_r2_heldout` | `lime_explanations.r2_heldout` | ≥ 0.2 |" in markdown
    assert "| `shape-detectors` | `dissection.detectors` |" in markdown and "No gate failed." in markdown
    assert "### Concept detectors (network dissection)" in markdown and "| triangle | object |" in markdown
    assert "This run was compared with no earlier version." in markdown  # version 1 is the first
    assert f"| spec sha256 | `{run['spec_sha256']}` |" in markdown and "| `torch` |" in markdown
    assert f"```yaml\n{run['spec_text'].rstrip()}\n```" in markdown


def assert_the_shortcut_card_names_its_failed_gates(store, v1: str, v2: str) -> None:
    """Version 2 of the review story (the shortcut model, audited against the approved version 1)."""
    card = model_card(store, v2)
    meta, markdown = card.data.to_dict()["interp_audit"], card.text
    assert meta["status"] == "failed_gates" and meta["review"] == "none" and meta["approval"] is None
    assert meta["gates"] == {"agrees-with-approved": "failed", "corner-shortcut": "failed", "shape-detectors": "failed"}
    assert "**Failed gates:** `agrees-with-approved`, `corner-shortcut`, `shape-detectors`" in markdown
    assert "| `corner-shortcut` | `lime.region_share` |" in markdown and "| ≤ 0.1 | **failed** |" in markdown
    gates = report.load_table(store, "gate_results", run_id=v2).set_index("gate")
    agreement = gates.loc["agrees-with-approved", "value"]
    assert f"- with v1 (approved run `{v1[:8]}`): top-k agreement {agreement:.3g}" in markdown
    assert f"Compared with v1 (approved run `{v1}`): LIME top-k agreement {agreement:.2f}" in markdown
    assert "None yet" in markdown and report.load_table(store, "model_cards", run_id=v2).empty
    assert_tables_whole(card.content)
