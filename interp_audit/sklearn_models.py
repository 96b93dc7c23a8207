"""scikit-learn models: a pipeline saved with skops, read without pickle, converted to ONNX with skl2onnx.

skops reads only the types it trusts (scikit-learn's estimators, numpy and scipy containers); any other type in
the file is refused, naming it, unless the spec lists it in ``model.trusted``. The converted graph outputs the
classifier's log-probabilities first, as ``logits``: the audit's softmax of them gives back the probabilities
exactly, so LIME explains what ``predict_proba`` says.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from interp_audit.errors import SpecError
from interp_audit.hashing import sha256_file
from interp_ops.cache_dirs import cache_dir, write_atomically

# log(0) is -inf, which the audit refuses as a model output: probabilities are clipped to this first
SMALLEST_PROBABILITY = 1e-12


def load_skops(path: Path, trusted: list[str]):
    """The estimator in ``path``, read with skops; SpecError (exit 2) names the types it holds beyond
    skops' defaults and ``trusted``."""
    import skops.io as sio

    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as exc:  # not a skops file: a zip of the wrong layout, a pickle, garbage
        raise SpecError(
            f"model.path: '{path.name}' is not a skops file ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
            "save the model with skops.io.dump(model, 'model.skops')"
        ) from None
    refused = sorted(set(untrusted) - set(trusted))
    if refused:
        raise SpecError(
            f"model.trusted: '{path.name}' holds types skops does not trust by default: {refused}. Loading them "
            "can run their code: list them in model.trusted only if you trust where this file comes from"
        )
    return sio.load(path, trusted=sorted(set(untrusted)))


def _final_step(estimator):
    return estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator


def sklearn_to_onnx(estimator, features: int) -> bytes:
    """The classifier as ONNX taking ``[batch, features]`` float32, whose first output ``logits`` is
    ``log(predict_proba)``; SpecError names the pipeline step skl2onnx cannot convert."""
    import onnx
    from onnx import TensorProto, helper
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    classifier = _final_step(estimator)
    if not hasattr(classifier, "predict_proba"):
        raise SpecError(
            f"model.path: the model ends in {type(classifier).__name__}, which has no predict_proba; an audited "
            "model must give class scores, so audit a classifier"
        )
    expected = getattr(estimator, "n_features_in_", features)
    if expected != features:
        raise SpecError(
            f"model.input.shape: [{features}] features, but the model was fitted on {expected}; give [{expected}]"
        )
    try:
        model = to_onnx(
            estimator,
            initial_types=[("input", FloatTensorType([None, features]))],
            options={id(classifier): {"zipmap": False}},
        )
    except Exception as exc:
        text = " ".join(str(exc).split())
        steps = getattr(estimator, "steps", [("model", estimator)])
        failing = [f"'{name}' ({type(step).__name__})" for name, step in steps if type(step).__name__ in text]
        where = f"step {failing[0]}" if failing else type(estimator).__name__
        raise SpecError(
            f"model.path: skl2onnx cannot convert {where}: {type(exc).__name__}: {text[:300]}. Replace it with "
            "a step skl2onnx converts (https://onnx.ai/sklearn-onnx/supported.html), or convert the model yourself "
            "and audit the ONNX file (model.source: onnx)"
        ) from None
    graph = model.graph
    probabilities = graph.output[1].name
    graph.initializer.append(helper.make_tensor("smallest_probability", TensorProto.FLOAT, [], [SMALLEST_PROBABILITY]))
    graph.node.extend(
        [
            helper.make_node("Max", [probabilities, "smallest_probability"], ["clipped_probabilities"]),
            helper.make_node("Log", ["clipped_probabilities"], ["logits"]),
        ]
    )
    classes = len(classifier.classes_)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, classes]))
    onnx.checker.check_model(model)
    return model.SerializeToString()


def converted_model(path: Path, trusted: list[str], features: int) -> tuple[Path, str]:
    """The ONNX file converted from the skops file ``path`` (cached per content, trusted types and skl2onnx
    version) and the skops file's sha256."""
    import skl2onnx

    digest = sha256_file(path)
    key = hashlib.sha256(
        "\0".join([digest, *sorted(trusted), str(features), skl2onnx.__version__]).encode()
    ).hexdigest()[:16]
    onnx_path = cache_dir("sklearn") / f"{key}.onnx"
    if not onnx_path.exists():
        onnx_bytes = sklearn_to_onnx(load_skops(path, trusted), features)
        onnx_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(onnx_path, lambda partial: partial.write_bytes(onnx_bytes))
    return onnx_path, digest
