"""`version_diffs`: what changed, per method, between the run of one model version and an earlier version's run."""

import pyarrow as pa

from data_contracts._core import RUN_ID, TableContract, Threshold, column

CONTRACT = TableContract(
    name="version_diffs",
    description="One row per compared item (sample, concept, category, unit) and metric between the newer run "
    "(run_id) and a run of an earlier version of the same model (baseline_run_id).",
    schema=pa.schema(
        [
            RUN_ID,
            column("baseline_run_id", pa.string(), "The earlier version's run this run is compared with."),
            column("baseline_version", pa.string(), "Model version of the baseline run."),
            column(
                "baseline_basis",
                pa.string(),
                "How the baseline was chosen: `approved` (latest approved version whose tables still match "
                "the approval), `passed` (latest passed version, none approved) or `requested` (report diff).",
            ),
            column(
                "method",
                pa.string(),
                "lime, sanity (LIME's sanity check), dissection, activation_max, ablation, tcav or probes.",
            ),
            column(
                "metric",
                pa.string(),
                "lime: topk_jaccard (top-k superpixel sets, same segmentation), attribution_shift (total "
                "variation between the normalized |weight| distributions, 0 same to 1 disjoint); dissection: "
                "detectors, detectors_gained, detectors_lost (units); activation_max: ratio (render "
                "activation / dataset max); ablation: accuracy_drop (per class and K), max_drop (the largest "
                "over the classes, per K); sanity: lime_similarity (mean rank similarity of LIME's explanations "
                "under the copy re-drawn through `layer` to the model's own, per step); tcav: score (the concept's TCAV "
                "score for the class at `layer`); probes: selectivity (of the attribute's probe at `layer`).",
            ),
            column(
                "scope",
                pa.string(),
                "What a row is about: sample, concept, category, unit, class, step (sanity), attribute (probes), or overall (mean, total or largest over the "
                "others).",
            ),
            column(
                "layer",
                pa.string(),
                "Layer compared (`output` for LIME, which explains the model output; for sanity, the lowest module "
                "re-drawn at the step).",
            ),
            column(
                "item",
                pa.string(),
                "Sample id, concept name, category, unit index, `CLASS k=K` (ablation), `step=N` (sanity), "
                "`CONCEPT -> CLASS` (tcav), the attribute (probes), or "
                "`*` (`k=K` for ablation) for overall.",
            ),
            column("category", pa.string(), "Concept category (dissection), else null.", nullable=True),
            column("old_value", pa.float64(), "The metric in the baseline run, where it has one.", nullable=True),
            column("new_value", pa.float64(), "The metric in this run, where it has one.", nullable=True),
            column("value", pa.float64(), "The comparison: agreement or shift (lime), new - old (others)."),
        ]
    ),
    unique_key=("run_id", "baseline_run_id", "method", "metric", "scope", "layer", "item"),
    allowed_values={
        "baseline_basis": ("approved", "passed", "requested"),
        "method": ("lime", "sanity", "dissection", "activation_max", "ablation", "tcav", "probes"),
        "scope": ("sample", "concept", "category", "unit", "class", "step", "attribute", "overall"),
    },
    ranges={},
)

THRESHOLDS: tuple[Threshold, ...] = ()
