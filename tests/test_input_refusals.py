"""Input that used to be accepted, or refused late with the wrong exit code: each is refused with exit 2, a message
naming the field or file (and row), and nothing in the report store.

Most run in-process and are refused before Prefect starts; one runs the real `interp-audit run` in a subprocess
(its whole output is what a user sees: no traceback).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import store_is_empty
from PIL import Image
from test_concepts import _mask_png, _rewrite_index, write_minimal
from typer.testing import CliRunner

from flows.cli import app
from interp_audit.errors import SpecError
from interp_audit.spec import MAX_SEED, parse_spec
from interp_ops.concepts import ConceptDataError, load_concepts

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()

BASE = """\
name: a
model: {source: onnx, name: m, version: "3", path: m.onnx, input: {shape: [3, 8, 8]}}
data: builtin:shapes
"""


def refusal(text: str) -> str:
    """The one-string message parse_spec refuses ``text`` with."""
    with pytest.raises(SpecError) as error:
        parse_spec(text, Path("."), source="spec.yaml")
    return " ".join(" ".join(error.value.messages).split())


def run_cli(*args) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, " ".join(result.output.split())


# --- the spec: NaN and infinity, booleans, seeds, thresholds, duplicate keys --------------------------------------


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        (
            BASE.replace("shape: [3, 8, 8]", "shape: [3, 8, 8], mean: [0, 0, 0], std: [.inf, 1, 1]"),
            "model.input.std[0]: must be a finite number, not NaN or infinity (got inf)",
        ),
        (
            BASE.replace("shape: [3, 8, 8]", "shape: [3, 8, 8], range: [0, .nan]"),
            "model.input.range[1]: must be a finite",
        ),
        (BASE + "ops: {lime: {hide: .nan}}\n", "ops.lime.hide: must be 'mean' or must be a finite number"),
        (BASE + "ops: {lime: {segmentation: {ratio: .nan}}}\n", "ops.lime.segmentation.ratio: must be a finite number"),
        (BASE + "ops: {lime: {kernel_width: .inf}}\n", "ops.lime.kernel_width: must be a finite number"),
        (BASE + "ops: {lime: {}}\ngates: [{metric: lime.agreement, min: .nan}]\n", "gates[0].min: must be a finite"),
        (BASE + "contracts: {onnx.max_abs_diff: .inf}\n", "contracts.onnx.max_abs_diff: must be a finite number"),
        (
            BASE + "contracts: {onnx.min_argmax_agreement: .nan}\n",
            "contracts.onnx.min_argmax_agreement: must be a finite",
        ),
    ],
)
def test_no_float_of_the_spec_may_be_nan_or_infinite(yaml_text, message):
    assert message in refusal(yaml_text)


@pytest.mark.parametrize(
    "line, message",
    [
        ("seed: true", "seed: must be an integer, not true"),
        ("ops: {lime: {num_samples: true}}", "ops.lime.num_samples: must be an integer, not true"),
        ("ops: {lime: {labels: [false]}}", "ops.lime.labels[0]: must be an integer, not false"),
        ("ops: {lime: {hide: true}}", "ops.lime.hide: must be 'mean' or must be a number, not true"),
        ("contracts: {onnx.max_abs_diff: true}", "contracts.onnx.max_abs_diff: must be a number, not true"),
    ],
)
def test_booleans_are_not_numbers(line, message):
    assert message in refusal(BASE + line + "\n")


@pytest.mark.parametrize("seed", [2**70, 2**32, -1])
def test_seed_outside_what_every_consumer_takes_is_refused(seed):
    assert f"seed: must be a whole number from 0 to {MAX_SEED} (got {seed})" in refusal(BASE + f"seed: {seed}\n")


def test_the_largest_seed_is_taken_by_every_consumer():
    import torch

    from interp_ops.builtin_data import shapes
    from interp_ops.concepts.builtin import parse_builtin_uri

    assert parse_spec(BASE + f"seed: {MAX_SEED}\n", Path(".")).spec.seed == MAX_SEED
    torch.manual_seed(MAX_SEED)
    np.random.default_rng([MAX_SEED + 2, 7])  # lime's seed + run
    np.random.SeedSequence([MAX_SEED, 3, 0])  # activation maximization's per-unit streams
    assert parse_builtin_uri("builtin:concepts", MAX_SEED)[2] == MAX_SEED  # builtin:concepts takes the spec's seed
    assert len(shapes("val", 1, MAX_SEED)[2]) == 1


@pytest.mark.parametrize(
    "contracts, message",
    [
        ("{onnx.max_abs_diff: -1}", "contracts.onnx.max_abs_diff: must be a finite number >= 0 (got -1.0)"),
        (
            "{onnx.min_argmax_agreement: 1.5}",
            "contracts.onnx.min_argmax_agreement: must be a number from 0 to 1 (got 1.5)",
        ),
        ("{lime.min_stability: -0.1}", "contracts.lime.min_stability: must be a number from 0 to 1 (got -0.1)"),
        ("{lime.min_r2_heldout: 2}", "contracts.lime.min_r2_heldout: must be a finite number <= 1 (got 2.0)"),
    ],
)
def test_contract_thresholds_must_lie_in_their_columns_range(contracts, message):
    assert message in refusal(BASE + f"contracts: {contracts}\n")


def test_thresholds_inside_their_range_are_kept():
    spec = parse_spec(
        BASE + "contracts: {onnx.max_abs_diff: 1e-4, lime.min_r2_heldout: -10, actmax.min_ratio: -1, "
        "onnx.min_argmax_agreement: 1}\n",
        Path("."),
    ).spec
    assert spec.contracts == {
        "onnx.max_abs_diff": 1e-4,
        "lime.min_r2_heldout": -10.0,
        "actmax.min_ratio": -1.0,
        "onnx.min_argmax_agreement": 1.0,
    }


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        (
            BASE + "seed: 1\nseed: 2\n",
            "invalid YAML at line 5, column 1: key 'seed' is given twice (first at line 4); keep one of them",
        ),
        (
            BASE + "ops:\n  lime: {top_k: 3,\n         top_k: 4}\n",
            "line 6, column 10: key 'top_k' is given twice (first at line 5)",
        ),
    ],
)
def test_duplicate_keys_are_refused_with_key_and_lines(yaml_text, message):
    assert message in refusal(yaml_text)


def test_a_merged_key_overridden_is_no_duplicate():
    lime = parse_spec(BASE + "ops:\n  lime: {<<: {top_k: 3, num_samples: 10}, top_k: 4}\n", Path(".")).spec.ops.lime
    assert (lime.top_k, lime.num_samples) == (4, 10)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"seed": 2**70}, "seed: must be a whole number from 0 to 4294967295"),
        ({"seed": True}, "seed: must be an integer, not true"),
        ({"model.input.std": [float("inf")]}, "model.input.std[0]: must be a finite number, not NaN or infinity"),
        ({"contracts": {"onnx.max_abs_diff": float("nan")}}, "contracts.onnx.max_abs_diff: must be a finite number"),
        ({"contracts": {"onnx.max_abs_diff": -1}}, "contracts.onnx.max_abs_diff: must be a finite number >= 0"),
        ({"ops": {"lime": {"hide": float("nan")}}}, "ops.lime.hide: must be 'mean' or must be a finite number"),
    ],
)
def test_cli_refuses_nonsense_with_exit_2(gray_spec, changes, message):
    path = gray_spec(**changes)
    code, output = run_cli("run", path)
    assert code == 2 and message in output, output
    assert store_is_empty(path.parent / "reports")


def test_cli_refuses_duplicate_keys_with_exit_2(gray_spec):
    path = gray_spec()
    path.write_text(path.read_text().replace("seed: 3\n", "seed: 3\nseed: 4\n"))
    code, output = run_cli("run", path)
    assert code == 2 and "key 'seed' is given twice (first at line 2)" in output, output
    assert store_is_empty(path.parent / "reports")


# --- ONNX files that are none --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "'model.onnx' is empty (0 bytes), not an ONNX model"),
        (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "'model.onnx' is not an ONNX model: it does not parse as one"),
        (b"\x08\x07", "'model.onnx' is not an ONNX model: it holds no graph"),  # ir_version 7 and nothing else
        ("truncated", "'model.onnx' is not an ONNX model"),
    ],
)
def test_a_file_that_is_no_onnx_model_says_so(gray_spec, tmp_path, content, message):
    if content == "truncated":
        from onnx import TensorProto, helper

        tensor = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 28, 28])
        graph = helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])],
            "g",
            [tensor],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 28, 28])],
        )
        whole = helper.make_model(graph).SerializeToString()
        content = whole[: len(whole) // 2]
    (tmp_path / "model.onnx").write_bytes(content)
    path = gray_spec(
        model={
            "source": "onnx",
            "name": "gray-net",
            "version": "7",
            "path": "model.onnx",
            "input": {"shape": [1, 28, 28]},
        }
    )
    code, output = run_cli("validate", path)
    assert code == 2, output
    assert f"model.path: {message}" in output and "tensors are" not in output, output


# --- Broden folders ------------------------------------------------------------------------------------------------


def test_mask_headers_show_wrong_size_and_non_png_without_decoding(tmp_path, monkeypatch):
    from interp_ops.concepts import concept_set

    monkeypatch.setattr(concept_set, "open_image", lambda data: pytest.fail("a mask was decoded"))
    root = write_minimal(tmp_path / "broden")
    load_concepts(str(root)).check_mask_headers()  # a sound folder passes
    _mask_png(root / "images/im1_a.png", np.full((5, 4), 300))
    with pytest.raises(
        ConceptDataError,
        match=r"mask 'im1_a\.png' \(index\.csv row 2, category 'thing'\) is 5x4 "
        r"pixels but the row gives sh=4, sw=4",
    ):
        load_concepts(str(root)).check_mask_headers()
    (root / "images/im1_a.png").unlink()
    (root / "images/notes.txt").write_text("not a mask")
    (root / "images/im1_a.png").symlink_to("notes.txt")  # a link inside the folder, to a file that is no PNG
    with pytest.raises(ConceptDataError, match=r"mask 'im1_a\.png' \(index\.csv row 2.*is not a PNG file"):
        load_concepts(str(root)).check_mask_headers()


def test_mask_headers_are_read_from_other_filesystems_too(tmp_path):
    import fsspec

    source = write_minimal(tmp_path / "broden")
    _mask_png(source / "images/im1_a.png", np.full((4, 5), 300))
    memory = fsspec.filesystem("memory")
    for path in source.rglob("*"):
        if path.is_file():
            memory.pipe(f"/headers/{path.relative_to(source).as_posix()}", path.read_bytes())
    with pytest.raises(ConceptDataError, match=r"mask 'im1_a\.png' \(index\.csv row 2.*is 4x5 pixels"):
        load_concepts("/headers", filesystem=memory).check_mask_headers()


def test_links_out_of_the_concept_folder_are_refused_like_dotdot_paths(tmp_path):
    root = write_minimal(tmp_path / "broden")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / "images/im0_b.png").rename(outside / "im0_b.png")
    (root / "images/im0_b.png").symlink_to(outside / "im0_b.png")  # a sound PNG, but outside the folder
    with pytest.raises(
        ConceptDataError,
        match=r"index\.csv row 1, column 'thing' names mask 'im0_b\.png', a symbolic "
        r"link to .*elsewhere/im0_b\.png, outside the concept folder",
    ):
        load_concepts(str(root))
    (root / "images/im0_b.png").unlink()
    (outside / "im0_b.png").rename(root / "images/im0_b.png")
    (root / "images/sub").symlink_to(outside, target_is_directory=True)  # a linked folder leads out just as well
    (outside / "im2.png").write_bytes((root / "images/im2.png").read_bytes())
    _rewrite_index(root, lambda rows: rows[3].__setitem__(0, "sub/im2.png"))
    with pytest.raises(ConceptDataError, match=r"index\.csv row 3 names image 'sub/im2\.png', a symbolic link"):
        load_concepts(str(root))
    (root / "images/sub").unlink()
    (root / "images/sub").symlink_to(root / "images", target_is_directory=True)  # staying inside is fine
    assert load_concepts(str(root)).image_ids[2] == "sub/im2.png"


def test_unlisted_index_columns_are_ignored_when_empty_and_named_when_they_hold_labels(tmp_path):
    root = write_minimal(tmp_path / "broden")
    _rewrite_index(
        root, lambda rows: [row.extend(["part", "material"] if i == 0 else ["", ""]) for i, row in enumerate(rows)]
    )
    assert load_concepts(str(root)).categories == {"thing": "pixel", "kind": "image"}
    _rewrite_index(root, lambda rows: rows[2].__setitem__(9, "im1_a.png"))
    with pytest.raises(
        ConceptDataError,
        match=r"index\.csv column\(s\) \['material'\] hold labels \(row 2: "
        r"'im1_a\.png'\) but category\.csv does not list them",
    ):
        load_concepts(str(root))


def dissection_spec(gray_spec, concepts: Path) -> Path:
    """The gray model with a small LIME block and a dissection of one layer on ``concepts``."""
    return gray_spec(
        ops={
            "lime": {
                "samples": 2,
                "num_samples": 50,
                "stability_seeds": 1,
                "heldout_samples": 0,
                "segmentation": {"method": "slic", "n_segments": 10},
            },
            "dissection": {"layers": ["body.conv1"], "concepts": str(concepts), "baseline": "none"},
        }
    )


def cli_subprocess(spec: Path, env: dict | None = None) -> tuple[int, str]:
    """`interp-audit run` as a user runs it: everything it prints, stdout and stderr together."""
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", str(spec)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )
    return done.returncode, done.stdout + done.stderr


def test_preflight_refuses_a_broken_broden_folder_before_any_method_runs(gray_spec, tmp_path):
    root = write_minimal(tmp_path / "broden")
    _mask_png(root / "images/im1_a.png", np.full((5, 4), 300))
    spec = dissection_spec(gray_spec, root)
    code, output = run_cli("run", spec)
    assert code == 2, output
    assert (
        "invalid input: ops.dissection.concepts: mask 'im1_a.png' (index.csv row 2, category 'thing') is 5x4" in output
    ), output
    assert "Traceback" not in output and "ONNX bundle ready" not in output and "LIME" not in output, output
    assert store_is_empty(tmp_path / "reports")
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(root / "images/im1_a.png", format="JPEG")
    code, output = run_cli("validate", spec)  # a JPEG named .png: also seen from its first bytes
    assert code == 2 and "mask 'im1_a.png' (index.csv row 2, category 'thing') is not a PNG file" in output, output


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_a_mask_with_an_unknown_label_stops_the_run_with_exit_2(gray_spec, tmp_path):
    from prefect.settings import PREFECT_API_URL

    root = write_minimal(tmp_path / "broden")
    _mask_png(root / "images/im1_a.png", np.full((4, 4), 1234))  # a sound PNG header: seen only when decoded
    spec = dissection_spec(gray_spec, root)
    assert run_cli("validate", spec)[0] == 0
    code, output = cli_subprocess(
        spec, {"PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_HOME": str(tmp_path / "prefect-home")}
    )
    assert code == 2, output
    assert (
        "invalid input: ops.dissection.concepts: mask 'im1_a.png' (index.csv row 2, category 'thing') holds "
        "label id(s) 1234 that label.csv does not list" in " ".join(output.split())
    ), output
    assert "Traceback" not in output and "UnfinishedRun" not in output, output
    assert store_is_empty(tmp_path / "reports")
