"""Bad input: a clear message naming the problem and the fix, exit code 2, and nothing in the report store.

These run `interp-audit run` in-process: every one of them must be refused before Prefect starts.
"""

import pickle

import pytest
import torch
from conftest import store_is_empty
from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()


def run_cli(spec_path):
    result = runner.invoke(app, ["run", str(spec_path)])
    return result.exit_code, " ".join(result.output.split())


def assert_refused(spec_path, *fragments):
    code, output = run_cli(spec_path)
    assert code == 2, output
    for fragment in fragments:
        assert fragment in output, output
    assert store_is_empty(spec_path.parent / "reports")


def test_invalid_yaml(gray_spec):
    path = gray_spec()
    path.write_text("name: x\nmodel: [unclosed\n")
    assert_refused(path, "invalid YAML at line", "fix the syntax")


def test_unknown_key(gray_spec):
    assert_refused(gray_spec(**{"model.wieghts": "x.pt"}), "model.wieghts: unknown key")


def test_unknown_method(gray_spec):
    assert_refused(gray_spec(ops={"saliency": {}}), "ops.saliency: unknown method")


def test_wrong_type(gray_spec):
    assert_refused(gray_spec(seed="seven"), "seed: must be an integer (got 'seven')")
    assert_refused(
        gray_spec(**{"model.input.shape": [1, -28, 28]}), "model.input.shape[1]: must be a positive integer (got -28)"
    )


def test_unknown_contract_key(gray_spec):
    assert_refused(
        gray_spec(contracts={"onnx.max_abs_dif": 1e-4}), "unknown contract key 'onnx.max_abs_dif'", "onnx.max_abs_diff"
    )


def test_missing_weights_file(gray_spec):
    assert_refused(gray_spec(**{"model.weights": "nowhere.pt"}), "model.weights: file 'nowhere.pt' does not exist")


def test_weights_that_do_not_fit(gray_spec, tmp_path):
    from user_models import tabular_mlp

    torch.save(tabular_mlp().state_dict(), tmp_path / "other.pt")
    assert_refused(
        gray_spec(**{"model.weights": "other.pt"}),
        "the weights do not fit the module",
        "Missing key(s)",
        "body.conv1.weight",
    )


def test_unknown_layer(gray_spec):
    assert_refused(
        gray_spec(**{"model.layers": ["body.conv1", "features.9"]}),
        "model.layers[1]: no layer 'features.9' in the model; layers are: body, body.conv1, body.act1",
    )


@pytest.mark.parametrize(
    "block, message",
    [
        (
            {"layers": ["body.conv2"]},
            "ops.activation_max.layers[0]: 'body.conv2' is not one of model.layers "
            "['body.conv1', 'body.act2']; add it there",
        ),
        (
            {"units": [1, 6]},
            "ops.activation_max.units: unit 6 is out of range for layer 'body.act2', which has 6 units (0..5)",
        ),
        ({"units": "first:0"}, "ops.activation_max.units: must be 'all', 'first:N' with N >= 1"),
        ({"steps": 0}, "ops.activation_max.steps: must be a positive integer (got 0)"),
        ({"objective": "diversity"}, "ops.activation_max.objective: must be 'channel' or 'neuron' (got 'diversity')"),
        ({"param": "cppn"}, "ops.activation_max.param: must be 'fft' or 'pixel' (got 'cppn')"),
    ],
)
def test_bad_activation_max_block(gray_spec, block, message):
    assert_refused(
        gray_spec(**{"model.layers": ["body.conv1", "body.act2"], "ops": {"activation_max": block}}), message
    )


def test_activation_max_needs_a_torch_model(gray_spec):
    # refused from the spec alone, before the file is even looked at
    spec = gray_spec(
        **{
            "model": {
                "source": "onnx",
                "name": "gray-net",
                "version": "7",
                "path": "gray.onnx",
                "input": {"shape": [1, 28, 28]},
            },
            "ops": {"activation_max": {}},
        }
    )
    assert_refused(
        spec,
        "ops.activation_max: activation maximization follows gradients, which an onnx model does not "
        "give; audit a torch model (model.source: torch) or remove ops.activation_max",
    )


def test_pickled_module_refused_without_trust(gray_spec, tmp_path):
    from user_models import gray_net

    torch.save(gray_net(), tmp_path / "whole.pt")
    assert_refused(gray_spec(**{"model.weights": "whole.pt"}), "is not a plain state dict", "model.trust_pickle: true")


class Exploit:
    """Unpickling this would create a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_never_executed(gray_spec, tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pt", "wb") as handle:
        pickle.dump({"body.conv1.weight": Exploit(str(marker))}, handle)
    torch.save({"state": Exploit(str(marker))}, tmp_path / "evil2.pt")
    for name in ("evil.pt", "evil2.pt"):
        assert_refused(gray_spec(**{"model.weights": name}), "model.weights", "trust_pickle")
    assert not marker.exists()


def test_trusted_pickle_is_accepted(gray_spec, tmp_path):
    from user_models import gray_net

    torch.save(gray_net(), tmp_path / "whole.pt")
    result = runner.invoke(
        app,
        [
            "validate",
            str(gray_spec(**{"model.weights": "whole.pt", "model.trust_pickle": True, "model.factory": None})),
        ],
    )
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "factory, message",
    [
        (
            "feature_map_net",
            "output has shape (12, 6, 11, 11) for a batch of 12; an audited model must return class scores",
        ),
        ("nan_net", "outputs NaN or Inf for 12 of 12 samples"),
    ],
)
def test_bad_model_outputs(gray_spec, factory, message):
    path = gray_spec()
    spec_text = path.read_text().replace(":gray_net", f":{factory}")
    path.write_text(spec_text)
    assert_refused(path, message)


def test_class_names_must_match_outputs(gray_spec):
    assert_refused(
        gray_spec(**{"model.input.class_names": ["a", "b", "c"]}), "3 names given but the model outputs 10 classes"
    )


def test_missing_data_path(gray_spec):
    assert_refused(gray_spec(data="no/such/images"), "data: path 'no/such/images' does not exist")


@pytest.mark.parametrize("key", ["model.name", "model.version", "name"])
def test_names_that_could_escape_the_store(gray_spec, key):
    assert_refused(gray_spec(**{key: "../escape"}), f"{key}: must be a plain name", "'../escape'")


def test_cuda_requested_without_cuda(gray_spec, monkeypatch):
    # a machine without CUDA, on any machine (a GPU machine used to skip this test)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = runner.invoke(app, ["run", str(gray_spec()), "--device", "cuda"])
    assert result.exit_code == 2 and "CUDA is not available" in result.output, result.output
    assert store_is_empty(gray_spec().parent / "reports")


def test_validate_accepts_a_good_spec(gray_spec):
    result = runner.invoke(app, ["validate", str(gray_spec())])
    assert result.exit_code == 0, result.output
    assert "valid: gray-audit: torch model gray-net v7, 2 layer(s), 12 samples" in " ".join(result.output.split())


def test_only_names_a_method_the_spec_does_not_declare(gray_spec):
    result = runner.invoke(app, ["run", str(gray_spec()), "--only", "lime"])
    assert result.exit_code == 2
    assert "--only: lime not declared under ops in the spec; declared methods: none" in " ".join(result.output.split())
    assert store_is_empty(gray_spec().parent / "reports")


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["run"],
        ["validate"],
        ["schedule"],
        ["watch"],
        ["demo"],
        ["schema"],
        ["report"],
        ["report", "list"],
        ["report", "show"],
        ["report", "query"],
        ["review"],
    ],
)
def test_every_command_has_help(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output, result.output
