"""The data set is read once per run: the checks before the run read a probe of its first samples, the flow reads
everything once, and the probe is exactly the first samples of that read."""

import collections
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import store_is_empty
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from interp_audit import inputs as model_inputs_module
from interp_audit.preflight import PROBE_SAMPLES
from interp_audit.spec import InputSpec
from interp_ops import datasets, samples

# imageio, while it tries plugins on a broken file; PIL, on the palette and 16-bit test images
pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore:Palette images with Transparency:UserWarning"
)
runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def write_image_folder(folder, rng, count, modes=("L",), sizes=((28, 28),)):
    """``count`` PNGs of blocky random content, cycling through the PIL ``modes`` and ``sizes`` given."""
    folder.mkdir()
    for index in range(count):
        height, width = sizes[index % len(sizes)]
        pixels = np.kron(rng.integers(0, 256, (4, 4, 4)), np.ones((8, 8, 1)))[:height, :width].astype(np.uint8)
        image = Image.fromarray(pixels, "RGBA").convert(modes[index % len(modes)])
        image.save(folder / f"img{index:03d}.png")
    return folder


MIXED_MODES = ("L", "LA", "RGB", "RGBA", "P", "1", "I;16")
MIXED_SIZES = ((28, 28), (32, 30), (28, 28), (20, 24))


@pytest.fixture
def data_sources(tmp_path, rng):
    """Every kind of data source, each holding more samples than the previews below ask for."""
    write_image_folder(tmp_path / "mixed", rng, 23, MIXED_MODES, MIXED_SIZES)
    np.save(tmp_path / "first.npy", rng.random((19, 3, 6, 5), dtype=np.float32))
    np.save(tmp_path / "gray.npy", rng.integers(0, 256, (19, 6, 5), dtype=np.uint8))
    np.save(tmp_path / "table.npy", rng.standard_normal((19, 4)))
    np.savez(tmp_path / "labelled.npz", images=rng.random((19, 6, 5, 3)), y=rng.integers(0, 3, 19).astype(float))
    return [
        "builtin:shapes?split=val&n=20",
        "builtin:shapes-shortcut?split=train&n=20",
        "builtin:tabular-planted?n=20",
        "builtin:breast_cancer",
        "mixed",
        "first.npy",
        "gray.npy",
        "table.npy",
        "labelled.npz",
    ]


@pytest.mark.parametrize("count", [1, 7])
def test_a_preview_holds_every_id_and_the_first_samples_of_the_full_read(tmp_path, data_sources, count):
    for uri in data_sources:
        full = datasets.load_samples(uri, tmp_path, seed=5)
        preview = datasets.preview_samples(uri, tmp_path, seed=5, count=count)
        assert preview.ids == full.ids, uri
        head = preview.head
        assert head.ids == full.ids[:count] and len(head.x) == count, uri
        np.testing.assert_array_equal(head.x, full.x[:count], err_msg=uri)
        for field in ("labels", "masks"):
            expected = getattr(full, field)
            assert (getattr(head, field) is None) == (expected is None), (uri, field)
            if expected is not None:
                np.testing.assert_array_equal(getattr(head, field), expected[:count], err_msg=f"{uri} {field}")
        assert (head.class_names, head.feature_names) == (full.class_names, full.feature_names), uri
        everything = datasets.preview_samples(uri, tmp_path, seed=5, count=len(full.ids) + 3).head
        np.testing.assert_array_equal(everything.x, full.x, err_msg=uri)


@pytest.mark.parametrize("rows", [4, 100])
def test_the_chunks_of_a_pass_are_the_full_read(tmp_path, data_sources, rows):
    for uri in data_sources:
        full = datasets.load_samples(uri, tmp_path, seed=5)
        ids, chunks = datasets.sample_chunks(uri, tmp_path, 5, rows)
        chunks = list(chunks)
        assert ids == full.ids and [chunk.ids for chunk in chunks][0] == full.ids[: min(rows, len(full.ids))], uri
        assert all(len(chunk.x) <= rows for chunk in chunks), uri
        np.testing.assert_array_equal(np.concatenate([chunk.x for chunk in chunks]), full.x, err_msg=uri)
        for field in ("labels", "masks"):
            parts = [getattr(chunk, field) for chunk in chunks]
            if getattr(full, field) is None:
                assert all(part is None for part in parts), (uri, field)
            else:
                np.testing.assert_array_equal(np.concatenate(parts), getattr(full, field), err_msg=f"{uri} {field}")


def test_the_run_reads_its_samples_from_disk_a_batch_at_a_time_and_converts_them_once(
    tmp_path, data_sources, monkeypatch
):
    """The converted samples go to a file of the model-inputs cache, a chunk at a time; the same data converted the
    same way is served from that file; the file keys a task's cache as the array in it would."""
    from interp_audit.blobs import array_sha256
    from interp_audit.cache_keys import content_key
    from interp_ops.sample_file import SampleFile

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(model_inputs_module, "BATCH_ROWS", 4)
    gray = InputSpec(shape=[1, 12, 10], range=(-1.0, 1.0), mean=[0.1], std=[0.5])
    cases = {
        "mixed": gray,
        "builtin:shapes?n=20": gray,
        "first.npy": InputSpec(shape=[3, 6, 5]),
        "table.npy": InputSpec(shape=[4]),
    }
    for uri, input_spec in cases.items():
        key = datasets.data_fingerprint(uri, tmp_path)
        streamed = model_inputs_module.model_inputs(uri, tmp_path, key, 5, input_spec)
        full = datasets.load_samples(uri, tmp_path, seed=5)
        expected = datasets.to_model_input(
            full, tuple(input_spec.shape), tuple(input_spec.range), input_spec.mean, input_spec.std
        )
        assert isinstance(streamed.x, SampleFile) and streamed.x.shape == expected.shape, uri
        np.testing.assert_array_equal(streamed.x[:], expected, err_msg=uri)
        np.testing.assert_array_equal(streamed.x[[5, -1, 0, 5]], expected[[5, -1, 0, 5]], err_msg=uri)
        assert streamed.x.sha256 == array_sha256(expected), uri
        assert streamed.ids == full.ids and streamed.class_names == (input_spec.class_names or full.class_names), uri
        assert (streamed.labels is None) == (full.labels is None), uri
        in_memory = model_inputs_module.ModelInputs(
            streamed.ids, expected, streamed.labels, streamed.class_names, streamed.feature_names
        )
        assert content_key({"inputs": streamed}) == content_key({"inputs": in_memory}), uri

        def no_second_read(*args):
            raise AssertionError("read again")

        with monkeypatch.context() as patched:
            patched.setattr(model_inputs_module, "sample_chunks", no_second_read)
            again = model_inputs_module.model_inputs(uri, tmp_path, key, 5, input_spec)
        assert again.x == streamed.x and again.ids == streamed.ids, uri
    converted = (tmp_path / "cache" / "interp-audit" / "model-inputs").iterdir()
    assert sorted(path.suffix for path in converted) == [".json"] * len(cases) + [".npy"] * len(cases)


def test_bad_values_in_a_later_chunk_are_refused_and_leave_no_file(tmp_path, monkeypatch, rng):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(model_inputs_module, "BATCH_ROWS", 4)
    images = rng.random((11, 6, 5), dtype=np.float32)
    images[9, 2, 2] = np.nan
    np.save(tmp_path / "images.npy", images)
    with pytest.raises(model_inputs_module.SpecError, match="images.npy holds image values in"):
        model_inputs_module.model_inputs(
            "images.npy", tmp_path, datasets.data_fingerprint("images.npy", tmp_path), 0, InputSpec(shape=[1, 6, 5])
        )
    assert list((tmp_path / "cache" / "interp-audit" / "model-inputs").iterdir()) == []


def test_a_sample_file_reads_like_the_array_it_holds(tmp_path, rng):
    from interp_ops.sample_file import open_sample_file, row_batches, write_sample_file

    array = rng.random((10, 2, 3), dtype=np.float32)
    stored = write_sample_file(tmp_path / "x.npy", (array[i : i + 3] for i in range(0, 10, 3)), 10)
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), array)  # a plain .npy
    assert open_sample_file(tmp_path / "x.npy", stored.sha256) == stored
    assert (len(stored), stored.ndim, stored.shape) == (10, 3, (10, 2, 3))
    for index in (
        slice(None),
        slice(2, 7),
        slice(8, 20),
        slice(-3, None),
        slice(5, 2),
        [],
        [9, 0, 9, -10],
        np.array([3, 1]),
    ):
        np.testing.assert_array_equal(stored[index], array[index], err_msg=str(index))
    np.testing.assert_array_equal(np.concatenate(list(row_batches(stored, 4))), array)
    with pytest.raises(IndexError):
        stored[[10]]
    with pytest.raises(ValueError, match="announced"):
        write_sample_file(tmp_path / "short.npy", iter([array[:3]]), 10)
    assert not list(tmp_path.glob("*short*"))  # nothing left of a failed write
    with open(tmp_path / "x.npy", "r+b") as stream:
        stream.truncate(stored.header_bytes + 5 * stored.row_bytes)
    with pytest.raises(OSError, match="truncated"):
        stored[4:7]


def test_the_probe_preflight_checks_is_the_first_rows_of_the_model_input(tmp_path, data_sources):
    gray = InputSpec(shape=[1, 12, 10], range=(-1.0, 1.0), mean=[0.1], std=[0.5])
    colour = InputSpec(shape=[3, 6, 5])
    for uri, input_spec in [("mixed", gray), ("builtin:shapes?n=20", gray), ("first.npy", colour)]:
        full = model_inputs_module.model_inputs(uri, tmp_path, datasets.data_fingerprint(uri, tmp_path), 5, input_spec)
        probe = model_inputs_module.inputs_probe(uri, tmp_path, 5, input_spec, 7)
        assert probe.ids == full.ids and probe.class_names == full.class_names, uri
        np.testing.assert_array_equal(probe.x, full.x[:7], err_msg=uri)


@pytest.mark.parametrize("mode", [*MIXED_MODES, "P-transparent", "CMYK", "JPEG-L", "JPEG-RGB"])
def test_the_folder_layout_read_from_headers_is_what_decoding_gives(tmp_path, rng, mode):
    pixels = rng.integers(0, 256, (9, 7, 4), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGBA")
    path = tmp_path / ("image.jpg" if mode.startswith("JPEG") or mode == "CMYK" else "image.png")
    if mode == "P-transparent":
        image.convert("P").save(path, transparency=0)
    else:
        image.convert(mode.removeprefix("JPEG-")).save(path)
    assert samples._stored_shape(path) == samples._read_image(path).shape


def test_an_unreadable_image_past_the_probe_is_refused_by_the_preview(tmp_path, rng):
    folder = write_image_folder(tmp_path / "images", rng, PROBE_SAMPLES + 3)
    (folder / "zz-broken.png").write_bytes(b"not a png")
    with pytest.raises(datasets.DataError) as refused:
        datasets.preview_samples("images", tmp_path, seed=0, count=PROBE_SAMPLES)
    with pytest.raises(datasets.DataError) as decoded:
        datasets.load_samples("images", tmp_path, seed=0)
    assert "cannot read image" in str(refused.value) and "zz-broken.png" in str(refused.value)
    assert str(refused.value) == str(decoded.value)


class ReadCounter:
    """Counts, during one run, every decoded image, every file hashed, and the samples read and converted."""

    def __init__(self, monkeypatch):
        self.decoded = collections.Counter()
        self.hashed = collections.Counter()
        self.full_reads, self.previews, self.converted = [], [], []
        self._wrap(monkeypatch, samples, "_read_image", lambda path: self.decoded.update([path.name]))
        self._wrap(monkeypatch, datasets, "_hash_file", lambda digest, path: self.hashed.update([path.name]))
        self._wrap(monkeypatch, model_inputs_module, "sample_chunks", lambda uri, *_: self.full_reads.append(uri))
        self._wrap(monkeypatch, model_inputs_module, "preview_samples", lambda uri, *_: self.previews.append(uri))
        self._wrap(
            monkeypatch,
            model_inputs_module,
            "to_model_input",
            lambda data, *_, **__: self.converted.append(len(data.x)),
        )

    @staticmethod
    def _wrap(monkeypatch, module, name, record):
        original = getattr(module, name)

        def counted(*args, **kwargs):
            record(*args, **kwargs)
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_one_run_decodes_every_image_once_and_only_the_probe_before_it(gray_spec, tmp_path, rng, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no converted samples from an earlier session
    total = PROBE_SAMPLES + 9
    write_image_folder(tmp_path / "images", rng, total, ("L", "RGB"), ((28, 28), (30, 32)))
    counter = ReadCounter(monkeypatch)

    result = runner.invoke(app, ["run", str(gray_spec(data="images"))])
    assert result.exit_code == 0, result.output

    names = sorted(path.name for path in (tmp_path / "images").iterdir())
    # the whole set: read, decoded, converted and hashed (the cache key of that read) once, by the flow
    assert counter.full_reads == ["images"]
    assert counter.hashed == collections.Counter(names)
    # the checks before the run: the CLI's (before Prefect starts) and the flow's own, each on the probe only
    assert counter.previews == ["images", "images"]
    assert sorted(counter.converted) == [PROBE_SAMPLES, PROBE_SAMPLES, total]
    probe_reads = 1 + len(counter.previews)
    assert counter.decoded == collections.Counter(
        {name: probe_reads if index < PROBE_SAMPLES else 1 for index, name in enumerate(names)}
    )
    from interp_audit import report

    assert len(report.load_table(tmp_path / "reports", "predictions")) == total


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_bad_values_past_the_probe_are_refused_by_the_run_with_exit_2(gray_spec, tmp_path, rng):
    from prefect.settings import PREFECT_API_URL

    images = rng.random((PROBE_SAMPLES + 5, 28, 28)).astype(np.float32)
    images[:, 0, 0], images[-1, 3, 4] = 0.0, 2.5
    np.save(tmp_path / "images.npy", images)
    spec = gray_spec(data="images.npy")
    assert runner.invoke(app, ["validate", str(spec)]).exit_code == 0  # the probe holds sound values

    # as a user runs it (in-process, Prefect's console handlers would outlive the test runner's streams)
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", str(spec)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "PREFECT_API_URL": PREFECT_API_URL.value(),
            "PREFECT_HOME": str(tmp_path / "prefect-home"),
        },
    )
    output = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 2, output
    assert "invalid input: data: images.npy holds image values in [0, 2.5], expected [0, 1]" in output, output
    assert "Traceback" not in output and "ONNX bundle ready" not in output, output
    assert store_is_empty(tmp_path / "reports")
