"""The model card of an audited version, from its run's published tables, in Hugging Face's conventions: a YAML
metadata block, then Markdown sections (model details, intended use and limitations, evaluation, interpretability
findings, the diff with an earlier version, sign-offs, reproducibility).

>>> from interp_audit.model_card import write_model_card
>>> write_model_card("./reports", "3f2a", "shapes-cnn-v1-card.md")

``huggingface_hub``'s ``ModelCard`` renders it offline from ``templates/model_card.md.j2`` and checks that its
metadata parses back. Every section is a function of the store's state (no clock, no environment), so the card
stored with an approval (``model_cards``) is what ``report card`` writes for that run while nothing changes.
Values from specs, models and reviewers are escaped for Markdown here; the template only places them.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import yaml
from huggingface_hub import ModelCard, ModelCardData
from pydantic import ValidationError

from data_contracts import THRESHOLDS
from interp_audit.diff import headline, records, summarize
from interp_audit.errors import SpecError
from interp_audit.html_report import fmt, fmt_time
from interp_audit.readings import largest_drops, similarity_by_step, versus_random
from interp_audit.report import find_run, load_table, review_state
from interp_audit.spec.audit import CardSpec
from interp_audit.spec.messages import format_validation_error
from interp_audit.store import ReportStore

TEMPLATE = "model_card.md.j2"
TOP_CONCEPTS = 5  # concepts shown per dissected layer, most detectors first
TOP_CONCEPT_CHANGES = 5  # concepts with the most detectors lost (or gained) shown per baseline
MAX_FAILED_EXPECTATIONS = 20
CARD_TABLE = "model_cards"

Table = Callable[[str], pd.DataFrame]


# ----------------------------------------------------------------------------------------------- Markdown


def text(value: Any) -> str:
    """Free text for a Markdown line or table cell: one line, no table breaks, code spans or raw HTML."""
    if value is None:
        return fmt(None)
    flat = " ".join(str(value).split())
    return flat.replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`").replace("<", "&lt;")


def code(value: Any) -> str:
    """An identifier (hash, run id, layer, key) as a code span; its backticks cannot end the span early."""
    if value is None:
        return fmt(None)
    flat = " ".join(str(value).split()).replace("|", "\\|")
    longest = max((len(run) for run in re.findall(r"`+", flat)), default=0)
    fence = "`" * (longest + 1)
    padding = " " if longest else ""
    return f"{fence}{padding}{flat}{padding}{fence}"


def fenced(body: str, info: str = "") -> str:
    """A fenced code block that no backtick run inside ``body`` can close."""
    longest = max((len(run) for run in re.findall(r"`{3,}", body)), default=2)
    fence = "`" * (longest + 1)
    return f"{fence}{info}\n{body.rstrip()}\n{fence}"


def _limits(low: Any, high: Any) -> str:
    low, high = (None if pd.isna(v) else float(v) for v in (low, high))
    if low is not None and high is not None:
        return f"{fmt(low)} to {fmt(high)}"
    if low is not None:
        return f"\u2265 {fmt(low)}"
    return f"\u2264 {fmt(high)}" if high is not None else fmt(None)


def _mean(series: pd.Series) -> float | None:
    values = pd.to_numeric(series, errors="coerce").dropna()
    return float(values.mean()) if len(values) else None


# ------------------------------------------------------------------------------------------------ sections


def card_block(spec_text: str) -> CardSpec:
    """The ``card:`` block of the spec a run was audited with (an empty one when it has none)."""
    try:
        raw = yaml.safe_load(spec_text)
    except yaml.YAMLError:
        return CardSpec()
    block = raw.get("card") if isinstance(raw, dict) else None
    try:
        return CardSpec.model_validate(block or {})
    except ValidationError as exc:
        raise SpecError([f"the run's spec: card.{line}" for line in format_validation_error(exc)]) from None


def _details(run: dict, tables_sha256: str) -> list[tuple[str, str]]:
    return [
        ("model", code(run["model_name"])),
        ("version", code(run["model_version"])),
        ("source", text(run["model_source"])),
        ("audit", code(run["audit_name"])),
        ("run id", code(run["run_id"])),
        ("audit status", f"**{text(run['status'])}**"),
        ("audited", fmt_time(run["finished_at"])),
        ("data", f"{code(run['data_uri'])} ({fmt(run['num_samples'])} samples)"),
        ("weights sha256", code(run["weights_sha256"])),
        ("ONNX sha256", code(run["onnx_sha256"])),
        ("tables sha256", code(tables_sha256)),
    ]


def _uses(card: CardSpec) -> dict:
    return {
        "owners": [text(owner) for owner in card.owners],
        "intended_use": text(card.intended_use) if card.intended_use else None,
        "out_of_scope": [text(use) for use in card.out_of_scope_uses],
        "limitations": [text(limitation) for limitation in card.known_limitations],
    }


def _methods(table: Table) -> list[tuple[str, list[tuple[str, str]]]]:
    """Each method the run has results of, with its headline metrics."""
    methods = []
    predictions = table("predictions")
    if not predictions.empty:
        labelled = predictions[predictions["correct"].notna()]
        accuracy = float(labelled["correct"].astype(bool).mean()) if len(labelled) else None
        methods.append(
            (
                "predictions",
                [
                    ("samples", fmt(len(predictions))),
                    (f"accuracy on {len(labelled)} labelled samples", fmt(accuracy)),
                    ("mean probability of the predicted class", fmt(_mean(predictions["probability"]))),
                ],
            )
        )
    parity = table("onnx_parity")
    if not parity.empty:
        methods.append(
            (
                "ONNX parity (PyTorch vs ONNX Runtime)",
                [
                    ("outputs compared", fmt(len(parity))),
                    ("largest absolute difference", fmt(float(parity["max_abs_diff"].max()))),
                    ("lowest argmax agreement", fmt(float(parity["argmax_agreement"].min()))),
                ],
            )
        )
    lime = table("lime_explanations")
    if not lime.empty:
        methods.append(
            (
                "LIME",
                [
                    ("explanations", fmt(len(lime))),
                    ("mean R\u00b2 held out", fmt(_mean(lime["r2_heldout"]))),
                    ("mean stability (top-k Jaccard across seeds)", fmt(_mean(lime["stability"]))),
                    ("mean deletion AUC (lower is better)", fmt(_mean(lime["deletion_auc"]))),
                    ("mean insertion AUC (higher is better)", fmt(_mean(lime["insertion_auc"]))),
                    ("mean faithfulness correlation (higher is better)", fmt(_mean(lime["faithfulness_correlation"]))),
                ],
            )
        )
    actmax = table("actmax_units")
    if not actmax.empty:
        first = actmax[actmax["render"] == 0]
        methods.append(
            (
                "activation maximization",
                [
                    ("units rendered", fmt(len(first))),
                    ("mean render / dataset-max ratio", fmt(_mean(first["ratio"]))),
                    ("renders driving their unit past every dataset image", fmt(int((first["ratio"] >= 1).sum()))),
                    ("mean robustness", fmt(_mean(actmax["robustness"]))),
                    *(
                        (
                            f"renders of {code(row.layer)} beating the re-drawn copy's (ratio; robustness)",
                            f"{row.beating} of {row.compared} (mean {fmt(row.ratio)} against "
                            f"{fmt(row.random_ratio)}; {fmt(row.robustness)} against {fmt(row.random_robustness)})",
                        )
                        for row in versus_random(actmax).itertuples()
                    ),
                ],
            )
        )
    checks = table("sanity_checks")
    if not checks.empty:
        methods.append(
            (
                "LIME sanity check (weights re-drawn from the output down)",
                [
                    (
                        f"mean rank similarity with {code(row.randomised_through)} re-drawn (step {row.step})",
                        fmt(float(row.mean)),
                    )
                    for row in similarity_by_step(checks).itertuples()
                ],
            )
        )
    ablation = table("ablation_results")
    if not ablation.empty:
        rows = [
            (
                f"largest drop of a class's balanced accuracy, {int(worst['k'])} unit(s) of {code(worst['layer'])} "
                "zeroed",
                f"{fmt(float(worst['accuracy_drop']))} ({text(worst['class_name'])}; random units "
                f"{fmt(worst['random_drop_mean'])})",
            )
            for worst in largest_drops(ablation).to_dict("records")
        ]
        methods.append(("unit ablation", rows))
    scores = table("tcav_scores")
    if not scores.empty:
        significant = scores[scores["significant"].astype(bool)]
        methods.append(
            (
                "TCAV (concepts the decision depends on)",
                [
                    (
                        f"{text(row.concept)} for {text(row.class_name)} at {code(row.layer)}",
                        f"score {fmt(float(row.score_mean))} (random sets {fmt(float(row.random_score_mean))}, "
                        f"p {fmt(row.p_value)})",
                    )
                    for row in significant.sort_values(["layer", "concept", "class_index"]).itertuples()
                ]
                or [("significant tests", f"none of {len(scores)}")],
            )
        )
    probed = table("probe_results")
    if not probed.empty:
        methods.append(
            (
                "linear probes (selectivity: accuracy above the control task's)",
                [
                    (
                        f"{text(row.attribute)} at {code(row.layer)}",
                        f"accuracy {fmt(float(row.accuracy_mean))}, selectivity {fmt(float(row.selectivity))}",
                    )
                    for row in probed.sort_values(["attribute", "depth"]).itertuples()
                ],
            )
        )
    units = table("dissection_units")
    if not units.empty:
        methods.append(
            (
                "network dissection",
                [
                    (f"detectors in {code(layer)}", f"{int(group['is_detector'].sum())} of {len(group)} units")
                    for layer, group in units.groupby("layer", sort=False)
                ],
            )
        )
    return methods


def _thresholds(results: pd.DataFrame, spec_text: str) -> list[list[str]]:
    """The spec's ``contracts:`` thresholds, each with the worst value seen and whether it held."""
    try:
        raw = yaml.safe_load(spec_text)
    except yaml.YAMLError:
        raw = None
    declared = raw.get("contracts") if isinstance(raw, dict) else None
    rows = []
    for key, limit in sorted((declared or {}).items()):
        threshold = THRESHOLDS.get(key)
        if threshold is None:
            continue
        expectation = f"expect_column_{threshold.bound}_to_be_between"
        found = results[
            (results["table_name"] == threshold.table)
            & (results["column"] == threshold.column)
            & (results["expectation"] == expectation)
        ]
        outcome = ("met" if bool(found["success"].all()) else "**failed**") if len(found) else "not checked"
        observed = found["observed_value"].iloc[0] if len(found) else None
        rows.append(
            [
                code(key),
                code(f"{threshold.table}.{threshold.column}"),
                _limits(limit, None) if threshold.bound == "min" else _limits(None, limit),
                text(observed),
                outcome,
            ]
        )
    return rows


def _contracts(results: pd.DataFrame, spec_text: str) -> dict | None:
    if results.empty:
        return None
    failed = results[~results["success"].astype(bool)]
    return {
        "met": len(results) - len(failed),
        "total": len(results),
        "thresholds": _thresholds(results, spec_text),
        "failed": [
            [code(row["table_name"]), code(row["expectation"]), code(row["column"]), text(row["observed_value"])]
            for row in records(failed.head(MAX_FAILED_EXPECTATIONS))
        ],
        "more_failed": max(0, len(failed) - MAX_FAILED_EXPECTATIONS),
    }


def _gates(gates: pd.DataFrame) -> dict | None:
    if gates.empty:
        return None
    order = {"failed": 0, "skipped": 1, "passed": 2}
    rows = sorted(records(gates.sort_values("gate")), key=lambda row: order.get(row["outcome"], 3))
    return {
        "failed": [code(row["gate"]) for row in rows if row["outcome"] == "failed"],
        "rows": [
            [
                code(row["gate"]),
                code(row["metric"]),
                fmt(row["value"]),
                _limits(row["min"], row["max"]),
                "**failed**" if row["outcome"] == "failed" else text(row["outcome"]),
                text(row["detail"]),
            ]
            for row in rows
        ],
    }


def _detectors(units: pd.DataFrame) -> list[dict]:
    """Per dissected layer: the concepts with the most detector units, each with its best unit and IoU."""
    layers = []
    for layer, group in units.groupby("layer", sort=False):
        detectors = group[group["is_detector"].astype(bool)]
        concepts = []
        for concept, found in detectors.groupby("concept"):
            best = found.sort_values(["iou", "unit"], ascending=[False, True]).iloc[0]
            concepts.append((-len(found), -float(best["iou"]), concept, found, best))
        rows = [
            [text(concept), text(best["category"]), fmt(len(found)), fmt(int(best["unit"])), fmt(float(best["iou"]))]
            for _, _, concept, found, best in sorted(concepts, key=lambda item: item[:3])[:TOP_CONCEPTS]
        ]
        layers.append(
            {
                "layer": code(layer),
                "detectors": len(detectors),
                "units": len(group),
                "concepts": len(concepts),
                "rows": rows,
            }
        )
    return layers


def _ratios(actmax: pd.DataFrame) -> list[list[str]]:
    first = actmax[actmax["render"] == 0]
    rows = []
    for layer, group in first.groupby("layer", sort=False):
        ratios = pd.to_numeric(group["ratio"], errors="coerce").dropna()
        rows.append(
            [
                code(layer),
                fmt(len(group)),
                fmt(float(ratios.mean()) if len(ratios) else None),
                fmt(float(ratios.min()) if len(ratios) else None),
                fmt(float(ratios.max()) if len(ratios) else None),
                f"{int((ratios >= 1).sum())} of {len(group)}",
            ]
        )
    return rows


def _agreement(baselines: list[dict]) -> list[str]:
    """LIME's agreement with each earlier version the run was compared with, the approved one first."""
    ranked = sorted(baselines, key=lambda baseline: baseline["basis"] != "approved")
    return [
        f"with v{text(baseline['version'])} ({text(baseline['basis'])} run {code(baseline['run_id'][:8])}): "
        f"top-k agreement {fmt(baseline['lime']['jaccard'])}, attribution shift {fmt(baseline['lime']['shift'])}"
        for baseline in ranked
        if baseline["lime"]
    ]


def _findings(table: Table, baselines: list[dict]) -> dict | None:
    units, actmax = table("dissection_units"), table("actmax_units")
    findings = {
        "detectors": _detectors(units) if not units.empty else [],
        "agreement": _agreement(baselines),
        "ratios": _ratios(actmax) if not actmax.empty else [],
        "has_lime": not table("lime_explanations").empty,
    }
    return findings if findings["detectors"] or findings["ratios"] or findings["has_lime"] else None


def _diffs(baselines: list[dict]) -> list[dict]:
    diffs = []
    for baseline in baselines:
        concepts = (baseline["dissection"] or {}).get("concepts", [])
        changed = sorted(concepts, key=lambda row: (-row["lost"], -row["gained"], row["layer"], row["item"]))
        diffs.append(
            {
                "title": f"v{text(baseline['version'])} ({text(baseline['basis'])} run {code(baseline['run_id'])})",
                "headline": text(headline(baseline)),
                "concepts": [
                    [code(row["layer"]), text(row["item"]), fmt(row["old"]), fmt(row["new"]), fmt(row["lost"])]
                    for row in changed[:TOP_CONCEPT_CHANGES]
                ],
            }
        )
    return diffs


def _sign_offs(reviews: pd.DataFrame) -> list[dict]:
    return [
        {
            "decision": text(row["decision"]),
            "reviewer": text(row["reviewer"]),
            "time": fmt_time(row["reviewed_at"]),
            "comment": text(row["comment"]) if row["comment"] else None,
            "review_id": code(row["review_id"]),
            "tables_sha256": code(row["tables_sha256"]),
            "matches": row["matches_tables"],
        }
        for row in records(reviews)
    ]


def _reproducibility(run: dict) -> dict:
    try:
        versions = json.loads(run["package_versions"] or "{}")
    except (TypeError, ValueError):
        versions = {}
    providers = run["ort_providers"]
    return {
        "fields": [
            ("spec sha256", code(run["spec_sha256"])),
            ("seed", code(run["seed"])),
            ("data", code(run["data_uri"])),
            ("device", code(run["device"])),
            ("ONNX Runtime providers", text(", ".join(providers) if providers is not None else None)),
            ("started", fmt_time(run["started_at"])),
            ("finished", fmt_time(run["finished_at"])),
        ],
        "packages": [[code(name), code(version)] for name, version in sorted(versions.items())]
        if isinstance(versions, dict)
        else [],
        "spec": fenced(run["spec_text"], "yaml"),
    }


# -------------------------------------------------------------------------------------------------- the card


def _metadata(run: dict, tables_sha256: str, gates: pd.DataFrame, reviews: pd.DataFrame) -> ModelCardData:
    """The YAML block: Hugging Face's keys where they fit, the audit's own under ``interp_audit`` (the standing
    review is the latest one, as for baselines)."""
    latest = records(reviews)[-1] if len(reviews) else None
    approval = (
        {
            "reviewer": latest["reviewer"],
            "reviewed_at": fmt_time(latest["reviewed_at"]),
            "review_id": latest["review_id"],
            "tables_sha256": latest["tables_sha256"],
            "matches_tables": latest["matches_tables"],
        }
        if latest and latest["decision"] == "approved"
        else None
    )
    return ModelCardData(
        model_name=run["model_name"],
        tags=["interp-audit", f"source-{run['model_source']}"],
        interp_audit={
            "run_id": run["run_id"],
            "audit": run["audit_name"],
            "model_version": run["model_version"],
            "status": run["status"],
            "review": latest["decision"] if latest else "none",
            "approval": approval,
            "gates": {row["gate"]: row["outcome"] for row in records(gates.sort_values("gate"))},
            "spec_sha256": run["spec_sha256"],
            "weights_sha256": run["weights_sha256"],
            "onnx_sha256": run["onnx_sha256"],
            "tables_sha256": tables_sha256,
        },
    )


def _template() -> str:
    return resources.files("interp_audit").joinpath("templates", TEMPLATE).read_text(encoding="utf-8")


def _build(store: ReportStore, run_id: str) -> tuple[ModelCard, dict, str]:
    """The card of a run (full id or unique prefix), the run's row, and the tables hash it was written from."""
    run = find_run(store, run_id)

    def table(name: str) -> pd.DataFrame:
        return load_table(store, name, run_id=run["run_id"])

    reviews, tables_sha256 = review_state(store, run)
    gates, baselines = table("gate_results"), summarize(table("version_diffs"))
    card = ModelCard.from_template(
        _metadata(run, tables_sha256, gates, reviews),
        template_str=_template(),
        title=f"{text(run['model_name'])} v{text(run['model_version'])}",
        run_ref=code(run["run_id"]),
        data=f"{code(run['data_uri'])} ({fmt(run['num_samples'])} samples)",
        details=_details(run, tables_sha256),
        uses=_uses(card_block(run["spec_text"])),
        methods=_methods(table),
        contracts=_contracts(table("contract_results"), run["spec_text"]),
        gates=_gates(gates),
        findings=_findings(table, baselines),
        diffs=_diffs(baselines),
        sign_offs=_sign_offs(reviews),
        repro=_reproducibility(run),
    )
    return card, run, tables_sha256


def _store(store: str | Path | ReportStore) -> ReportStore:
    return store if isinstance(store, ReportStore) else ReportStore.open(store)


def model_card(store: str | Path | ReportStore, run_id: str) -> ModelCard:
    """The model card of a published run (full id or unique prefix), rendered offline."""
    return _build(_store(store), run_id)[0]


def default_card_path(run: dict) -> Path:
    return Path(f"{run['model_name']}-v{run['model_version']}-card.md")


def write_model_card(store: str | Path | ReportStore, run_id: str, path: str | Path | None = None) -> Path:
    """Write a run's card to ``path`` (default ``<model>-v<version>-card.md`` here); its folder must exist, and
    the card is rendered before anything is written."""
    if path is not None and not Path(path).parent.is_dir():
        raise SpecError(
            f"output {str(path)!r}: the folder {str(Path(path).parent)!r} does not exist; create it or write "
            "the card elsewhere"
        )
    card, run, _ = _build(_store(store), run_id)
    target = Path(path) if path is not None else default_card_path(run)
    target.write_text(str(card), encoding="utf-8", newline="")
    return target


def store_model_card(store: str | Path | ReportStore, review: dict) -> dict:
    """Store the card of the run an approving review (a ``reviews`` row) approved, in ``model_cards`` as a file of
    its own; one card per review (its id derives from the review's), never rewritten. Returns the row."""
    opened = _store(store)
    try:
        card, run, tables_sha256 = _build(opened, review["run_id"])
    except Exception as exc:
        raise RuntimeError(
            f"the approval of run {review['run_id']} is recorded (review {review['review_id']}), but its model "
            f"card could not be written ({type(exc).__name__}: {exc}); `interp-audit report card "
            f"{review['run_id'][:8]}` writes it to a file"
        ) from exc
    markdown = str(card)
    row = {
        "run_id": run["run_id"],
        "card_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"model-card:{review['review_id']}")),
        "review_id": review["review_id"],
        "created_at": datetime.now(UTC),
        "card_sha256": hashlib.sha256(markdown.encode("utf-8")).hexdigest(),
        "tables_sha256": tables_sha256,
        "card_markdown": markdown,
    }
    opened.append(CARD_TABLE, row["card_id"], run["model_name"], run["model_version"], pa.Table.from_pylist([row]))
    return row
