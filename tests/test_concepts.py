"""Broden-format concept data: the reader's checks and batches, the builtin generator, other filesystems."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from interp_ops.concepts import (
    BUILTIN_CATEGORIES,
    ConceptDataError,
    builtin_concepts_dir,
    concepts_fingerprint,
    load_concepts,
    resolve_concepts,
    write_builtin_concepts,
)

# --- a minimal hand-made folder -----------------------------------------------------------------

# label numbers as a Broden folder would have them: not contiguous, and one above 255 (needs the G channel)
LABELS = [(5, "sky", "thing(1)"), (300, "tree", "thing(2)"), (7, "wet", "kind(1)"), (9, "dry", "kind(2)")]


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows(rows)


def _mask_png(path: Path, labels: np.ndarray) -> None:
    rgb = np.zeros((*labels.shape, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1] = labels % 256, labels // 256
    Image.fromarray(rgb).save(path)


def write_minimal(root: Path) -> Path:
    """3 images (8x8, the last 12x12), masks at 4x4; image 0 has two 'thing' masks, image 2 none."""
    images = root / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, side in enumerate([8, 8, 12]):
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(images / f"im{i}.png")
    first = np.zeros((4, 4), dtype=np.int64)
    first[:2] = 5
    second = np.zeros((4, 4), dtype=np.int64)
    second[1:3, :2] = 300
    _mask_png(images / "im0_a.png", first)
    _mask_png(images / "im0_b.png", second)
    _mask_png(images / "im1_a.png", np.full((4, 4), 300))
    _write_csv(
        root / "index.csv",
        ["image", "split", "ih", "iw", "sh", "sw", "thing", "kind"],
        [
            ["im0.png", "train", 8, 8, 4, 4, "im0_a.png;im0_b.png", "7"],
            ["im1.png", "train", 8, 8, 4, 4, "im1_a.png", "7;9"],
            ["im2.png", "val", 12, 12, 4, 4, "", ""],
        ],
    )
    _write_csv(
        root / "label.csv",
        ["number", "name", "category", "frequency", "coverage", "syns"],
        [[number, name, category, 1, 0.5, name] for number, name, category in LABELS],
    )
    _write_csv(
        root / "category.csv",
        ["name", "first", "last", "count", "frequency"],
        [["thing", 1, 2, 2, 2], ["kind", 1, 2, 2, 2]],
    )
    _write_csv(
        root / "c_thing.csv",
        ["code", "number", "name", "frequency", "coverage"],
        [[1, 5, "sky", 1, 0.5], [2, 300, "tree", 2, 1.25]],
    )
    _write_csv(
        root / "c_kind.csv",
        ["code", "number", "name", "frequency", "coverage"],
        [[1, 7, "wet", 2, 2.0], [2, 9, "dry", 1, 1.0]],
    )
    return root


def _rewrite_index(root: Path, change) -> None:
    with (root / "index.csv").open() as stream:
        rows = list(csv.reader(stream))
    change(rows)
    _write_csv(root / "index.csv", rows[0], rows[1:])


def test_minimal_folder_loads_with_layers_resizing_and_image_labels(tmp_path):
    concepts = load_concepts(str(write_minimal(tmp_path / "broden")))
    assert len(concepts) == 3
    assert concepts.labels == {5: "sky", 300: "tree", 7: "wet", 9: "dry"}
    assert concepts.categories == {"thing": "pixel", "kind": "image"}
    assert concepts.label_category == {5: "thing", 300: "thing", 7: "kind", 9: "kind"}
    assert concepts.image_size == (8, 8) and concepts.mask_size == (4, 4)
    (batch,) = list(concepts.batches(8))
    assert batch.images.shape == (3, 8, 8, 3) and batch.images.dtype == np.float32
    assert 0.0 <= batch.images.min() and batch.images.max() <= 1.0
    original = np.asarray(Image.open(tmp_path / "broden/images/im0.png"), dtype=np.float32) / 255
    np.testing.assert_array_equal(batch.images[0], original)
    layers = batch.pixel_labels["thing"]
    assert layers.shape == (3, 2, 4, 4) and layers.dtype == np.int32
    assert set(np.unique(layers[0, 0])) == {0, 5} and set(np.unique(layers[0, 1])) == {0, 300}
    assert (layers[1, 0] == 300).all() and (layers[1, 1] == 0).all() and (layers[2] == 0).all()
    combined = batch.label_map("thing")  # later mask wins where both label a pixel
    assert combined[0, 1, 0] == 300 and combined[0, 0, 0] == 5 and combined[0, 3, 3] == 0
    assert batch.image_labels["kind"] == [(7,), (7, 9), ()]


def test_batches_can_skip_images_or_masks(tmp_path):
    concepts = load_concepts(str(write_minimal(tmp_path / "broden")))
    masks_only = next(concepts.batches(2, images=False))
    assert masks_only.images is None and masks_only.pixel_labels["thing"].shape[0] == 2
    images_only = next(concepts.batches(2, masks=False))
    assert images_only.pixel_labels == {} and images_only.images.shape == (2, 8, 8, 3)
    assert [len(b) for b in concepts.batches(2)] == [2, 1]


def test_missing_column_names_file_and_column(tmp_path):
    root = write_minimal(tmp_path / "broden")
    _rewrite_index(root, lambda rows: [row.pop(4) for row in rows])  # drop 'sh'
    with pytest.raises(ConceptDataError, match=r"index\.csv has no column 'sh'"):
        load_concepts(str(root))


def test_missing_file_is_named(tmp_path):
    root = write_minimal(tmp_path / "broden")
    (root / "c_kind.csv").unlink()
    with pytest.raises(ConceptDataError, match=r"c_kind\.csv is missing"):
        load_concepts(str(root))


def test_mask_that_is_not_png_names_file_and_row(tmp_path):
    root = write_minimal(tmp_path / "broden")
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(root / "images/im1_a.jpg")
    _rewrite_index(root, lambda rows: rows[2].__setitem__(6, "im1_a.jpg"))
    concepts = load_concepts(str(root))  # contents are checked when read
    with pytest.raises(ConceptDataError, match=r"mask 'im1_a\.jpg' \(index\.csv row 2.*is not a PNG"):
        concepts.verify()


def test_unknown_label_in_mask_names_file_row_and_id(tmp_path):
    root = write_minimal(tmp_path / "broden")
    _mask_png(root / "images/im1_a.png", np.full((4, 4), 1234))
    with pytest.raises(ConceptDataError, match=r"mask 'im1_a\.png' \(index\.csv row 2.*label id\(s\) 1234"):
        list(load_concepts(str(root)).batches(4))


def test_unknown_image_level_label_names_row_and_id(tmp_path):
    root = write_minimal(tmp_path / "broden")
    _rewrite_index(root, lambda rows: rows[3].__setitem__(7, "8"))
    with pytest.raises(ConceptDataError, match=r"index\.csv row 3, column 'kind' has label id 8"):
        load_concepts(str(root))


def test_missing_mask_file_is_named_with_its_row(tmp_path):
    root = write_minimal(tmp_path / "broden")
    (root / "images/im0_b.png").unlink()
    with pytest.raises(ConceptDataError, match=r"index\.csv row 1, column 'thing' names mask 'im0_b\.png'"):
        load_concepts(str(root))


def test_mask_of_the_wrong_size_is_named(tmp_path):
    root = write_minimal(tmp_path / "broden")
    _mask_png(root / "images/im1_a.png", np.full((5, 4), 300))
    with pytest.raises(ConceptDataError, match=r"im1_a\.png.*5x4 pixels but the row gives sh=4, sw=4"):
        load_concepts(str(root)).verify()


# --- masks in other PNG modes -------------------------------------------------------------------
# Broden writes 8-bit RGB masks; other tools write the same label maps as a palette image (P, with or without a
# transparency chunk), gray + alpha (LA: labels up to 255) or 16-bit gray (I;16). Each must give the label ids that
# RGB gives for the same labels.

OTHER_MODES = ["P", "P+transparency", "LA", "I;16"]


def _mask_in_mode(path: Path, labels: np.ndarray, mode: str) -> None:
    if mode.startswith("P"):
        ids, codes = np.unique(labels, return_inverse=True)
        image = Image.fromarray(codes.reshape(labels.shape).astype(np.uint8))
        image.putpalette([channel for label in ids for channel in (label % 256, label // 256, 0)])
        image.save(path, **({"transparency": 0} if mode == "P+transparency" else {}))
    elif mode == "LA":
        alpha = np.random.default_rng(1).integers(0, 256, labels.shape)  # any alpha: only L holds the label
        Image.fromarray(np.stack([labels, alpha], axis=-1).astype(np.uint8)).save(path)
    else:
        Image.fromarray(labels.astype(np.uint16)).save(path)
    with Image.open(path) as written:
        assert written.mode == mode.split("+")[0] and ("transparency" in written.info) == mode.endswith("transparency")


@pytest.mark.parametrize(
    "mode, labels",
    [
        ("P", [0, 5, 300, 65535]),
        ("P+transparency", [0, 256, 40000]),
        ("LA", [0, 5, 255]),
        ("I;16", [0, 5, 300, 256, 65535]),
    ],
)
def test_masks_in_other_png_modes_decode_to_their_label_ids(tmp_path, mode, labels):
    from interp_ops.concepts.decode import decode_mask, open_image

    truth = np.random.default_rng(0).choice(labels, size=(6, 5))
    _mask_in_mode(tmp_path / "mask.png", truth, mode)
    _mask_png(tmp_path / "rgb.png", truth)
    for name in ("mask.png", "rgb.png"):
        with open_image((tmp_path / name).read_bytes()) as image:
            np.testing.assert_array_equal(decode_mask(image), truth, err_msg=name)


@pytest.mark.parametrize("mode", OTHER_MODES)
def test_a_folder_with_masks_in_other_png_modes_reads_as_with_rgb_masks(tmp_path, mode):
    truth = np.array([[0, 5, 5, 7], [9, 9, 0, 5], [7, 0, 300, 300], [0, 0, 9, 5]])
    if mode == "LA":
        truth[truth == 300] = 7
    rgb_root, mode_root = write_minimal(tmp_path / "rgb"), write_minimal(tmp_path / "mode")
    _mask_png(rgb_root / "images/im1_a.png", truth)
    _mask_in_mode(mode_root / "images/im1_a.png", truth, mode)
    load_concepts(str(mode_root)).check_mask_headers()
    rgb, other = (
        next(load_concepts(str(root)).batches(3, images=False)).pixel_labels["thing"] for root in (rgb_root, mode_root)
    )
    np.testing.assert_array_equal(other[1, 0], truth)
    np.testing.assert_array_equal(other, rgb)


def test_empty_folder_and_empty_index(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConceptDataError, match="is empty"):
        load_concepts(str(tmp_path / "empty"))
    with pytest.raises(ConceptDataError, match="does not exist"):
        load_concepts(str(tmp_path / "nowhere"))
    root = write_minimal(tmp_path / "broden")
    _rewrite_index(root, lambda rows: rows.__delitem__(slice(1, None)))
    with pytest.raises(ConceptDataError, match="index.csv lists no images"):
        load_concepts(str(root))


def test_label_in_undeclared_category(tmp_path):
    root = write_minimal(tmp_path / "broden")
    _write_csv(root / "label.csv", ["number", "name", "category"], [[5, "sky", "weather(1)"]])
    with pytest.raises(ConceptDataError, match=r"label\.csv row 1 puts label 5 in category 'weather'"):
        load_concepts(str(root))


def test_relative_paths_and_file_uri(tmp_path):
    write_minimal(tmp_path / "broden")
    by_base = load_concepts("broden", base_dir=tmp_path)
    by_uri = load_concepts((tmp_path / "broden").as_uri())
    assert by_base.image_ids == by_uri.image_ids == ["im0.png", "im1.png", "im2.png"]


# --- other filesystems --------------------------------------------------------------------------


def _same_batches(left, right) -> None:
    for a, b in zip(left.batches(2), right.batches(2), strict=True):
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.pixel_labels["thing"], b.pixel_labels["thing"])
        assert a.image_labels == b.image_labels


def test_loading_through_pyarrow_and_fsspec_filesystems(tmp_path):
    import fsspec
    import pyarrow.fs as pafs

    write_minimal(tmp_path / "data" / "broden")
    local = load_concepts(str(tmp_path / "data" / "broden"))
    subtree = pafs.SubTreeFileSystem(str(tmp_path / "data"), pafs.LocalFileSystem())
    _same_batches(local, load_concepts("broden", filesystem=subtree))
    _same_batches(local, load_concepts(str(tmp_path / "data" / "broden"), filesystem=pafs.LocalFileSystem()))
    _same_batches(local, load_concepts(str(tmp_path / "data" / "broden"), filesystem=fsspec.filesystem("file")))
    with pytest.raises(ConceptDataError, match="is missing"):
        (tmp_path / "data" / "broden" / "label.csv").unlink()
        load_concepts("broden", filesystem=subtree)


def test_in_memory_fsspec_filesystem(tmp_path):
    import fsspec

    source = write_minimal(tmp_path / "broden")
    memory = fsspec.filesystem("memory")
    for path in source.rglob("*"):
        if path.is_file():
            memory.pipe(f"/concepts/{path.relative_to(source).as_posix()}", path.read_bytes())
    _same_batches(load_concepts(str(source)), load_concepts("/concepts", filesystem=memory))


# --- the builtin generator ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    return write_builtin_concepts(tmp_path_factory.mktemp("builtin") / "concepts", n=24, size=32, seed=3)


def test_generated_folder_loads(generated):
    concepts = load_concepts(str(generated))
    assert len(concepts) == 24
    assert concepts.categories == {"color": "pixel", "object": "pixel", "texture": "pixel", "scene": "image"}
    assert sorted(concepts.labels.values()) == sorted(n for names in BUILTIN_CATEGORIES.values() for n in names)
    (batch,) = list(concepts.batches(24))
    assert batch.images.shape == (24, 32, 32, 3)
    for category in ("color", "object", "texture"):
        assert batch.pixel_labels[category].shape == (24, 1, 32, 32)
    # every scene has one object (colour and shape labelled together) and one scene label
    color, shape = batch.label_map("color"), batch.label_map("object")
    np.testing.assert_array_equal(color > 0, shape > 0)
    assert all((color[i] > 0).any() for i in range(24))
    assert all(len(labels) == 1 for labels in batch.image_labels["scene"])
    # red object pixels are red in the image
    red = next(label for label, name in concepts.labels.items() if name == "red")
    pixels = batch.images[color == red]
    if len(pixels):
        assert (pixels[:, 0] > 0.8).all() and (pixels[:, 1:] < 0.05).all()
    # texture labels never sit under objects
    assert not ((batch.label_map("texture") > 0) & (shape > 0)).any()


def test_generator_is_deterministic_by_seed_and_extends(tmp_path, generated):
    again = write_builtin_concepts(tmp_path / "again", n=24, size=32, seed=3)
    for name in (
        "index.csv",
        "label.csv",
        "category.csv",
        "c_color.csv",
        "images/000005.png",
        "images/000005_object.png",
    ):
        assert (again / name).read_bytes() == (generated / name).read_bytes(), name
    other = write_builtin_concepts(tmp_path / "other", n=24, size=32, seed=4)
    assert (other / "images/000005.png").read_bytes() != (generated / "images/000005.png").read_bytes()
    shorter = write_builtin_concepts(tmp_path / "shorter", n=6, size=32, seed=3)
    assert (shorter / "images/000005.png").read_bytes() == (generated / "images/000005.png").read_bytes()


def test_generator_refuses_an_existing_folder(generated):
    with pytest.raises(ConceptDataError, match="exists already"):
        write_builtin_concepts(generated, n=2, size=32)


def test_builtin_uri_is_cached_and_checked(tmp_path):
    uri = "builtin:concepts?n=5&size=16"
    folder = builtin_concepts_dir(uri, seed=2, cache_dir=tmp_path)
    assert folder.parent == tmp_path and "seed2" in folder.name
    stamp = (folder / "index.csv").stat().st_mtime_ns
    concepts = resolve_concepts(uri, seed=2, cache_dir=tmp_path)
    assert len(concepts) == 5 and concepts.image_size == (16, 16)
    assert (folder / "index.csv").stat().st_mtime_ns == stamp  # read from the cache, not written again
    assert builtin_concepts_dir(uri + "&seed=2", seed=9, cache_dir=tmp_path) == folder  # the uri's seed wins
    assert not list(tmp_path.glob(".*partial"))  # no leftovers of the atomic write
    assert concepts_fingerprint(uri, seed=2) != concepts_fingerprint(uri, seed=3)
    for bad, message in [
        ("builtin:concepts?n=0", "n='0' must be"),
        ("builtin:concepts?size=9", "size='9'"),
        ("builtin:concepts?colour=1", "unknown parameter 'colour'"),
        ("builtin:concept", "unknown builtin"),
    ]:
        with pytest.raises(ConceptDataError, match=message):
            resolve_concepts(bad, cache_dir=tmp_path)


def test_fingerprint_of_a_folder_follows_its_files(tmp_path):
    root = write_minimal(tmp_path / "broden")
    before = concepts_fingerprint(str(root))
    assert concepts_fingerprint(str(root)) == before
    shutil.copy(root / "images/im0.png", root / "images/extra.png")
    assert concepts_fingerprint(str(root)) != before
