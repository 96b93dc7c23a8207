"""The models teams hold (issue 18): an ONNX network torch never wrote, and scikit-learn pipelines saved with skops.

- An ONNX CNN built with onnx.helper, its intermediate tensors named by hand, audited with LIME and dissection;
  its one hand-set "red" filter is found by dissection (ground truth by construction).
- scikit-learn pipelines trained on ``builtin:tabular-planted``, whose label is income > debt_ratio: tabular LIME
  on the converted model puts those two features on top in >= 90% of rows, and the audited predictions equal
  ``predict_proba``'s.
- Bad input: a .skops file holding an untrusted type, a step skl2onnx cannot convert, a pickle posing as .skops,
  an ONNX layer without a fixed shape: exit 2, the field named, nothing written.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import onnx
import pytest
import skops.io as sio
import yaml
from conftest import store_is_empty
from onnx import TensorProto, helper, numpy_helper
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from typer.testing import CliRunner

from flows.cli import app
from interp_audit import report
from interp_ops.builtin_data import PLANTED_FEATURES, TABULAR_CLASS_NAMES, TABULAR_FEATURE_NAMES, tabular_planted

runner = CliRunner()
RED_FILTER = 0


def cli(*args) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, " ".join(result.output.split())


def write_spec(folder: Path, model: dict, data: str, ops: dict) -> Path:
    spec = {"name": "foreign", "model": model, "data": data, "ops": ops, "report": {"store": str(folder / "reports")}}
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# --- an ONNX CNN written by hand ----------------------------------------------------------------------------------


def helper_cnn(path: Path) -> Path:
    """input [N, 3, 32, 32] -> 3x3 conv (4 filters; filter 0 = R - G - B) -> "stem/act" (ReLU) -> 2x2 max pool ->
    "trunk/act" -> global mean -> "head/logits" [N, 2]. Filters 1-3 are seeded noise. Beside, unused:
    "stem/folded", the batch folded into the channels."""
    rng = np.random.default_rng(4)
    kernel = rng.normal(scale=0.2, size=(4, 3, 3, 3)).astype(np.float32)
    kernel[RED_FILTER] = 0.0
    kernel[RED_FILTER, :, 1, 1] = [1.0, -1.0, -1.0]
    initializers = {
        "stem.weight": kernel,
        "stem.bias": np.zeros(4, np.float32),
        "head.weight": rng.normal(size=(4, 2)).astype(np.float32),
        "spatial_axes": np.array([2, 3], np.int64),
        "fold_batch": np.array([1, -1, 32, 32], np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["input", "stem.weight", "stem.bias"], ["stem/conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["stem/conv"], ["stem/act"]),
        helper.make_node("Reshape", ["stem/act", "fold_batch"], ["stem/folded"]),  # unused by the logits
        helper.make_node("MaxPool", ["stem/act"], ["trunk/act"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("ReduceMean", ["trunk/act", "spatial_axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "head.weight"], ["head/logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "hand-written-cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("head/logits", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(value, name) for name, value in initializers.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="onnx.helper", ir_version=10
    )
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def cnn_model(path: Path, layers: list[str]) -> dict:
    return {
        "source": "onnx",
        "name": "hand-cnn",
        "version": "1",
        "path": path.name,
        "input": {"shape": [3, 32, 32], "class_names": ["a", "b"]},
        "layers": layers,
    }


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_an_onnx_cnn_written_without_torch_is_audited_with_lime_and_dissection(tmp_path):
    model = cnn_model(helper_cnn(tmp_path / "cnn.onnx"), ["stem/act", "trunk/act"])
    ops = {
        "lime": {"samples": 2, "num_samples": 200, "segmentation": {"method": "slic", "n_segments": 12}},
        "dissection": {"concepts": "builtin:concepts?n=150&size=32", "quantile": 0.01, "baseline": "none"},
    }
    code, output = cli("run", write_spec(tmp_path, model, "builtin:shapes?split=val&n=6", ops))
    assert code == 0, output
    store = tmp_path / "reports"
    run = report.list_runs(store).iloc[0]
    assert run.model_source == "onnx" and run.status == "passed", run.to_dict()
    units = report.load_table(store, "dissection_units").set_index(["layer", "unit"])
    assert sorted(units.index.get_level_values("layer").unique()) == ["stem/act", "trunk/act"]
    for layer in ("stem/act", "trunk/act"):
        assert units.loc[(layer, RED_FILTER), "concept"] == "red", units.loc[layer]
    assert len(report.load_table(store, "lime_explanations")) == 2


# --- scikit-learn pipelines saved with skops ----------------------------------------------------------------------


def planted_rows(split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    return tabular_planted(split, n, 0)


def sklearn_model_spec(path: Path, **extra) -> dict:
    return {
        "source": "sklearn",
        "name": "credit-risk",
        "version": "3",
        "path": path.name,
        "input": {"shape": [len(TABULAR_FEATURE_NAMES)], "class_names": list(TABULAR_CLASS_NAMES)},
        **extra,
    }


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize(
    "pipeline",
    [
        Pipeline([("scale", StandardScaler()), ("classify", LogisticRegression())]),
        Pipeline([("classify", GradientBoostingClassifier(n_estimators=60, max_depth=2, random_state=0))]),
    ],
    ids=["logistic", "gradient-boosting"],
)
def test_a_sklearn_pipeline_is_audited_with_tabular_lime_and_finds_the_planted_features(tmp_path, pipeline):
    x, y = planted_rows("train", 1000)
    pipeline.fit(x, y)
    sio.dump(pipeline, tmp_path / "model.skops")
    ops = {"lime": {"samples": 20, "num_samples": 1000, "top_k": 2}}
    # trees are held by a type skops does not trust by default: the spec says it trusts it, as a user would
    trusted = sio.get_untrusted_types(file=tmp_path / "model.skops")
    assert trusted in ([], ["sklearn.tree._tree.Tree"])
    spec = write_spec(
        tmp_path,
        sklearn_model_spec(tmp_path / "model.skops", trusted=trusted),
        "builtin:tabular-planted?split=val&n=40",
        ops,
    )
    code, output = cli("run", spec)
    assert code == 0, output
    store = tmp_path / "reports"
    run = report.list_runs(store).iloc[0]
    assert run.model_source == "sklearn" and run.model_version == "3"
    assert run.weights_sha256 == hashlib.sha256((tmp_path / "model.skops").read_bytes()).hexdigest()
    explanations = report.load_table(store, "lime_explanations")
    top_two = explanations.top_features.map(set)
    assert (top_two == set(PLANTED_FEATURES)).mean() >= 0.9, explanations.top_features.tolist()

    rows, _ = planted_rows("val", 40)
    predictions = report.load_table(store, "predictions")
    by_id = predictions.set_index("sample_id").sort_index()  # ids are zero-padded, in the data's order
    np.testing.assert_array_equal(by_id.predicted.to_numpy(), pipeline.predict(rows.astype(np.float32)))


class Doubler(TransformerMixin, BaseEstimator):
    """A user's own transformer: skops does not trust it, skl2onnx has no converter for it."""

    def fit(self, x, y=None):
        return self

    def transform(self, x):
        return 2 * x


class Majority(ClassifierMixin, BaseEstimator):
    def fit(self, x, y):
        self.classes_ = np.unique(y)
        return self

    def predict_proba(self, x):
        return np.tile([1.0, 0.0], (len(x), 1))


def saved(tmp_path: Path, estimator) -> Path:
    x, y = planted_rows("train", 200)
    sio.dump(estimator.fit(x, y), tmp_path / "model.skops")
    return tmp_path / "model.skops"


def test_a_skops_file_with_an_untrusted_type_is_refused_and_loads_once_trusted_then_fails_to_convert(tmp_path):
    path = saved(tmp_path, Pipeline([("double", Doubler()), ("classify", LogisticRegression())]))
    spec = write_spec(tmp_path, sklearn_model_spec(path), "builtin:tabular-planted?n=8", {"lime": {"samples": 2}})
    code, output = cli("validate", spec)
    assert code == 2 and "model.trusted: 'model.skops' holds types skops does not trust by default" in output, output
    assert "test_foreign_models.Doubler" in output and "list them in model.trusted" in output
    trusted = sio.get_untrusted_types(file=path)
    spec = write_spec(tmp_path, sklearn_model_spec(path, trusted=trusted), "builtin:tabular-planted?n=8", {})
    code, output = cli("validate", spec)
    assert code == 2 and "model.path: skl2onnx cannot convert step 'double' (Doubler)" in output, output
    assert store_is_empty(tmp_path / "reports")


def fitted_on_five_features():
    x, y = planted_rows("train", 100)
    return LogisticRegression().fit(x[:, :5], y)


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda p: p.write_bytes(pickle.dumps({"a": 1})), "model.path: 'model.skops' is not a skops file"),
        (
            lambda p: sio.dump(fitted_on_five_features(), p),
            "model.input.shape: [8] features, but the model was fitted on 5; give [5]",
        ),
        (
            lambda p: sio.dump(Majority().fit(*planted_rows("train", 10)), p),
            "model.trusted:",  # a user's classifier: untrusted first (and skl2onnx has no converter for it)
        ),
    ],
    ids=["pickle", "features", "own-classifier"],
)
def test_bad_sklearn_files_are_refused(tmp_path, write, message):
    write(tmp_path / "model.skops")
    spec = write_spec(tmp_path, sklearn_model_spec(tmp_path / "model.skops"), "builtin:tabular-planted?n=8", {})
    code, output = cli("validate", spec)
    assert code == 2 and message in output, output
    assert store_is_empty(tmp_path / "reports")


def test_an_onnx_layer_without_a_fixed_shape_per_sample_is_refused(tmp_path):
    """ "stem/folded" folds the batch into the channels ([1, N x 4, 32, 32]): its shape changes with the batch, so
    no per-sample map exists; the probe runs one sample and a batch, and the layer is refused, named."""
    path = helper_cnn(tmp_path / "cnn.onnx")
    spec = write_spec(tmp_path, cnn_model(path, ["stem/act", "stem/folded"]), "builtin:shapes?n=4", {})
    code, output = cli("validate", spec)
    assert code == 2, output
    assert "model.layers[1]: tensor 'stem/folded' has no fixed shape per sample: [1, 4, 32, 32] for 1 sample" in output
    assert store_is_empty(tmp_path / "reports")
