"""LIME task: explains one batch of samples; the flow fans these out over the audit's samples."""

from __future__ import annotations

import numpy as np
from prefect import task

from interp_audit.blobs import materialized
from interp_audit.errors import SpecError
from interp_audit.intake import ModelRef, build_torch_model
from interp_audit.spec import InputSpec
from interp_ops import lime, onnx_bundle
from interp_ops.datasets import to_display
from interp_ops.randomisation import cascade_order, cascading_copies
from interp_ops.sanity import randomisation_similarity
from tasks import CACHED
from tasks.gpu import compute_share


def _predict(onnx_bytes: bytes, device: str, threads: int) -> lime.Predict:
    session = onnx_bundle.make_session(onnx_bytes, device, threads)

    def predict(batch: np.ndarray) -> np.ndarray:
        logits = onnx_bundle.run_session(session, batch, batch_size=len(batch), outputs=[onnx_bundle.LOGITS])
        return onnx_bundle.softmax(logits[onnx_bundle.LOGITS])

    return predict


def _image_arguments(
    x: np.ndarray, labels: list[int] | None, settings: dict, input_spec: InputSpec
) -> tuple[tuple, dict]:
    """What ``ImageLime.attribute`` and ``.fixed_surrogates`` both take from the spec: the images, their display
    and each one's labels; and how to segment, perturb and weigh."""
    options = dict(
        num_samples=settings["num_samples"],
        kernel_width=settings["kernel_width"] or 0.25,
        hide=settings["hide"],
        segmentation=lime.Segmentation(**settings["segmentation"]),
        heldout_samples=settings["heldout_samples"],
    )
    display = to_display(x, input_spec.range, input_spec.mean, input_spec.std)
    return (x, display, None if labels is None else [labels] * len(x)), options


@task(name="lime", **CACHED)
def explain_with_lime(
    onnx_bytes: bytes,
    x: np.ndarray,
    sample_ids: list[str],
    sample_keys: list[int],
    labels: list[int] | None,
    settings: dict,
    input_spec: InputSpec,
    seed: int,
    device: str,
    class_names: list[str] | None = None,
    training_data: np.ndarray | None = None,
    feature_names: list[str] | None = None,
) -> tuple[list[dict], list[dict]]:
    """Explanation and attribution rows for ``x``; ``sample_keys`` (positions in the data) seed each sample,
    so the result does not depend on how the flow batches samples. ``settings``: ``LimeSpec.explainer_settings``."""
    onnx_bytes, x, training_data = materialized(onnx_bytes), materialized(x), materialized(training_data)
    per_sample_labels = None if labels is None else [labels] * len(x)
    with compute_share(device) as threads:
        predict = _predict(onnx_bytes, device, threads)
        try:
            if x.ndim == 4:
                images, options = _image_arguments(x, labels, settings, input_spec)
                result = lime.ImageLime(predict, settings["batch_size"]).attribute(
                    *images,
                    **options,
                    top_k=settings["top_k"],
                    stability_seeds=settings["stability_seeds"],
                    faithfulness_runs=settings["faithfulness_runs"],
                    faithfulness_subset=settings["faithfulness_subset"],
                    seed=seed,
                    sample_keys=sample_keys,
                )
            else:
                names = feature_names or [f"x{i}" for i in range(x.shape[1])]
                result = lime.TabularLime(predict, training_data, names, settings["batch_size"]).attribute(
                    x,
                    per_sample_labels,
                    kernel_width=settings["kernel_width"],
                    num_samples=settings["num_samples"],
                    top_k=settings["top_k"],
                    seed=seed,
                    sample_keys=sample_keys,
                    stability_seeds=settings["stability_seeds"],
                    heldout_samples=settings["heldout_samples"],
                    faithfulness_runs=settings["faithfulness_runs"],
                    faithfulness_subset=settings["faithfulness_subset"],
                )
        except lime.LimeInputError as exc:  # e.g. a segmentation that yields one segment: bad input, exit 2
            raise SpecError(f"ops.lime: {exc}") from None
    return report_rows(result, sample_ids, class_names)


@task(name="randomised-cascade", **CACHED)
def export_randomised_cascade(
    model: ModelRef, input_shape: tuple[int, ...], steps: int | None, seed: int
) -> list[tuple[str, bytes]]:
    """The ONNX bundles of the cascade of randomised copies (``interp_ops.randomisation.cascading_copies``): the
    top module re-drawn, then one more per step (``steps`` of them; None: every module), each with its name."""
    torch_model = build_torch_model(model)
    copies = cascading_copies(torch_model, seed, steps or len(cascade_order(torch_model)))
    return [(name, onnx_bundle.export_torch(copy.eval(), input_shape, [])) for name, copy in copies]


@task(name="lime-sanity", **CACHED)
def check_lime_sanity(
    onnx_bytes: bytes,
    cascade: list[tuple[str, bytes]],
    x: np.ndarray,
    sample_ids: list[str],
    sample_keys: list[int],
    labels: list[int] | None,
    settings: dict,
    input_spec: InputSpec,
    seed: int,
    device: str,
) -> list[dict]:
    """``sanity_checks`` rows: the samples explained with LIME's segments, perturbations and labels by each
    randomised copy of the ``cascade``, compared with their explanations by the model."""
    onnx_bytes, x = materialized(onnx_bytes), materialized(x)
    with compute_share(device) as threads:
        original = _predict(onnx_bytes, device, threads)
        images, options = _image_arguments(x, labels, settings, input_spec)
        explain = lime.ImageLime(original, settings["batch_size"]).fixed_surrogates(
            *images, **options, seed=seed, sample_keys=sample_keys
        )
        randomised = (_predict(materialized(copy), device, threads) for _, copy in cascade)  # one session at a time
        signed, absolute = randomisation_similarity(explain, original, randomised)
    return [
        {
            "method": "lime",
            "sample_id": sample_id,
            "label": int(label),
            "step": step + 1,
            "randomised_through": name,
            "similarity": float(signed[step, index, position]),
            "similarity_abs": float(absolute[step, index, position]),
        }
        for step, (name, _) in enumerate(cascade)
        for index, sample_id in enumerate(sample_ids)
        for position, label in enumerate(explain.labels[index])
    ]


def report_rows(
    result: lime.LimeResult, sample_ids: list[str], class_names: list[str] | None
) -> tuple[list[dict], list[dict]]:
    """The rows of ``lime_explanations`` and ``lime_attributions`` (without run_id) for the op's result."""
    # images have no bins and tables no superpixels: every column exists in every run, null where not apt
    no_segments = {"overlay_png": None, "height": None, "width": None, "segments": None}
    explanations = [{**no_segments, **_with_sample(row, sample_ids)} for row in result.explanations]
    for row in explanations:
        row["label_name"] = class_names[row["label"]] if class_names and row["label"] < len(class_names) else None
    no_segment = {"segment": None, "area_fraction": None, "bin": None}
    attributions = [{**no_segment, **_with_sample(row, sample_ids)} for row in result.attributions]
    return explanations, attributions


def _with_sample(row: dict, sample_ids: list[str]) -> dict:
    """Replace the op's position in the batch by the sample's id."""
    row = dict(row)
    row["sample_id"] = sample_ids[row.pop("sample_index")]
    return row
