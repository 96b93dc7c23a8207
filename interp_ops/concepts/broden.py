"""Reading and checking a Broden-format folder (Bau et al. 2017) into a ConceptSet.

A Broden folder holds

- ``index.csv``: one row per image with columns ``image, split, ih, iw, sh, sw`` and one column per category.
  A category cell lists ';'-separated entries: relative paths (under ``images/``) of mask PNGs whose pixels
  encode label = R + 256*G, or label numbers that apply to the whole image;
- ``label.csv``: ``number, name, category, frequency, coverage, syns``, ``category`` like ``color(3);object(7)``;
- ``category.csv``: ``name, first, last, count, frequency``;
- ``c_<category>.csv``: ``code, number, name, frequency, coverage``, one per category;
- ``images/``: the images and masks. Label 0 means unlabeled.

``load_concepts`` reads such a folder from a local path, a ``file://`` URI, any URI pyarrow understands, or a
pyarrow / fsspec filesystem, and checks it up front: every file that index.csv names must exist inside the folder
(symbolic links leading out of it are refused like ``../`` paths), every label must be declared, and so must every
category column that holds labels (empty ones are ignored, as NetDissect-Lite ignores them). The masks' bytes are
checked when they are read (``ConceptSet.check_mask_headers``, ``batches``, ``verify``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from interp_ops.concepts.concept_set import ConceptDataError, ConceptSet, IndexRow, read_bytes

META_COLUMNS = ("image", "split", "ih", "iw", "sh", "sw")
SIZE_COLUMNS = ("ih", "iw", "sh", "sw")
LABEL_COLUMNS = ("number", "name", "category")
CATEGORY_COLUMNS = ("name",)
CATEGORY_LABEL_COLUMNS = ("code", "number", "name")
BRODEN_LAYOUT = "a Broden folder holds index.csv, label.csv, category.csv, c_<category>.csv and images/"
_CATEGORY_ENTRY = re.compile(r"^([^()]+)\((\d+)\)$")


def _as_pyarrow(filesystem):
    """A pyarrow FileSystem for a pyarrow or fsspec filesystem."""
    import pyarrow.fs as pafs

    if isinstance(filesystem, pafs.FileSystem):
        return filesystem
    try:
        import fsspec
    except ImportError:  # pragma: no cover - fsspec is installed with the project's dependencies
        fsspec = None
    if fsspec is not None and isinstance(filesystem, fsspec.AbstractFileSystem):
        return pafs.PyFileSystem(pafs.FSSpecHandler(filesystem))
    raise ConceptDataError(
        f"concepts: filesystem {type(filesystem).__name__} is neither a pyarrow.fs.FileSystem nor an fsspec "
        "filesystem; pass one of those, or a local path"
    )


def _locate(uri: str, base_dir: Path | None, filesystem) -> tuple[object, str]:
    """(pyarrow filesystem, folder path inside it) for a path, a file:// URI, another URI, or a given filesystem."""
    import pyarrow.fs as pafs

    if filesystem is not None:
        path = urlsplit(uri).path if uri.startswith("file://") else uri
        return _as_pyarrow(filesystem), path.rstrip("/") or "/"
    parts = urlsplit(uri)
    if parts.scheme == "file":
        return pafs.LocalFileSystem(), str(Path(unquote(parts.path)).resolve())
    if parts.scheme and len(parts.scheme) > 1 and "://" in uri:  # one letter would be a Windows drive
        try:
            fs, path = pafs.FileSystem.from_uri(uri)
        except Exception as error:
            raise ConceptDataError(
                f"concepts: cannot open {uri!r} ({error}); give a local folder, a file:// URI, a URI that "
                "pyarrow.fs supports, or pass a filesystem"
            ) from None
        return fs, path.rstrip("/")
    path = Path(uri).expanduser()
    if not path.is_absolute():
        path = Path(base_dir if base_dir is not None else Path.cwd()) / path
    return pafs.LocalFileSystem(), str(path.resolve())


def _read_csv(filesystem, root: str, name: str, required: tuple[str, ...]) -> list[dict[str, str]]:
    import pyarrow.fs as pafs

    path = f"{root}/{name}"
    if filesystem.get_file_info(path).type != pafs.FileType.File:
        raise ConceptDataError(f"concepts: {name} is missing from {root}; {BRODEN_LAYOUT}")
    text = read_bytes(filesystem, path, name).decode("utf-8-sig")
    reader = csv.DictReader(io.StringIO(text))
    columns = reader.fieldnames or []
    for column in required:
        if column not in columns:
            raise ConceptDataError(
                f"concepts: {name} has no column {column!r} (it has {', '.join(columns) or 'no header'}); "
                f"add the column"
            )
    return list(reader)


def _parse_int(value: str, what: str, minimum: int = 0) -> int:
    text = (value or "").strip()
    if not text.isdigit() or int(text) < minimum:
        raise ConceptDataError(f"concepts: {what} is {value!r}; give a whole number >= {minimum}")
    return int(text)


def _parse_float(value: str | None) -> float:
    try:
        return float(value) if value not in (None, "") else 0.0
    except ValueError:
        return 0.0


def _read_categories(filesystem, root: str) -> list[str]:
    rows = _read_csv(filesystem, root, "category.csv", CATEGORY_COLUMNS)
    names = [row["name"].strip() for row in rows]
    for number, name in enumerate(names, start=1):
        if not name or name in META_COLUMNS:
            raise ConceptDataError(f"concepts: category.csv row {number} names category {name!r}; give another name")
    if len(set(names)) != len(names):
        raise ConceptDataError(f"concepts: category.csv lists a category twice ({names}); list each once")
    if not names:
        raise ConceptDataError("concepts: category.csv lists no categories; list at least one (e.g. object)")
    return names


def _read_labels(filesystem, root: str, categories: list[str]) -> tuple[dict[int, str], dict[int, str]]:
    """Label names and each label's primary category: where its coverage (c_<category>.csv) is largest."""
    membership: dict[int, set[str]] = {}
    names: dict[int, str] = {}
    for number, row in enumerate(_read_csv(filesystem, root, "label.csv", LABEL_COLUMNS), start=1):
        label = _parse_int(row["number"], f"label.csv row {number}, column 'number'")
        if label == 0:
            continue  # 0 is unlabeled by definition; some folders list it
        if label in names:
            raise ConceptDataError(f"concepts: label.csv row {number} repeats label number {label}; number labels once")
        names[label] = row["name"].strip()
        membership[label] = set()
        for entry in filter(None, (part.strip() for part in (row["category"] or "").split(";"))):
            match = _CATEGORY_ENTRY.match(entry)
            if match is None:
                raise ConceptDataError(
                    f"concepts: label.csv row {number} has category {entry!r}; write category(code), e.g. color(3)"
                )
            if match.group(1) not in categories:
                raise ConceptDataError(
                    f"concepts: label.csv row {number} puts label {label} in category {match.group(1)!r}, which "
                    "category.csv does not list; add the category or fix the label"
                )
            membership[label].add(match.group(1))
    coverage: dict[tuple[str, int], float] = {}
    for category in categories:
        name = f"c_{category}.csv"
        for number, row in enumerate(_read_csv(filesystem, root, name, CATEGORY_LABEL_COLUMNS), start=1):
            label = _parse_int(row["number"], f"{name} row {number}, column 'number'")
            if label == 0:
                continue
            if label not in names:
                raise ConceptDataError(
                    f"concepts: {name} row {number} lists label {label}, which label.csv does not; "
                    "add it to label.csv or remove the row"
                )
            membership[label].add(category)
            coverage[(category, label)] = _parse_float(row.get("coverage"))
    primary: dict[int, str] = {}
    for label, member_of in membership.items():
        if not member_of:
            raise ConceptDataError(
                f"concepts: label {label} ({names[label]!r}) belongs to no category; give it one in label.csv"
            )
        # NetDissect: the category with the largest coverage; ties go to the later category
        primary[label] = max(member_of, key=lambda c: (coverage.get((c, label), 0.0), categories.index(c)))
    return names, primary


def _list_files(filesystem, root: str) -> set[str]:
    import pyarrow.fs as pafs

    images = f"{root}/images"
    if filesystem.get_file_info(images).type != pafs.FileType.Directory:
        raise ConceptDataError(f"concepts: folder images/ is missing from {root}; {BRODEN_LAYOUT}")
    infos = filesystem.get_file_info(pafs.FileSelector(images, recursive=True))
    prefix = len(images) + 1
    return {info.path[prefix:] for info in infos if info.type == pafs.FileType.File}


def _any_link(path: str) -> bool:
    """Whether ``path`` is a symbolic link or holds one, at any depth (links are seen, never followed)."""
    if os.path.islink(path):
        return True
    folders = [path]
    while folders:
        with os.scandir(folders.pop()) as entries:
            for entry in entries:
                if entry.is_symlink():
                    return True
                if entry.is_dir(follow_symlinks=False):
                    folders.append(entry.path)
    return False


def _links_leaving(filesystem, root: str, files: set[str]) -> dict[str, str]:
    """Files under images/ that symbolic links (theirs or a parent folder's) lead out of the concept folder, with
    where they lead: a folder must not read what lies outside it, as ``../`` paths cannot. Only local folders have
    links, and without any link under images/ nothing can lead out, so most folders cost one directory walk."""
    import pyarrow.fs as pafs

    images = f"{root}/images"
    if not isinstance(filesystem, pafs.LocalFileSystem) or not _any_link(images):
        return {}
    inside = os.path.realpath(root)
    leaving = {}
    for relative in files:
        target = os.path.realpath(f"{images}/{relative}")
        if os.path.commonpath([inside, target]) != inside:
            leaving[relative] = target
    return leaving


def _missing_file(where: str, kind: str, name: str, leaving: dict[str, str], fix: str) -> ConceptDataError:
    if name in leaving:
        return ConceptDataError(
            f"concepts: {where} names {kind} {name!r}, a symbolic link to {leaving[name]}, outside the concept "
            "folder; copy the file into the folder's images/ instead of linking it"
        )
    return ConceptDataError(f"concepts: {where} names {kind} {name!r}, which is not under images/; {fix}")


def _unlisted_columns_with_labels(raw: list[dict], categories: list[str]) -> list[str]:
    """index.csv columns that category.csv does not list, yet hold entries. NetDissect-Lite ignores unlisted
    columns, and real Broden folders carry empty ones; only one that holds labels is a mistake worth stopping for
    (its labels would be silently dropped)."""
    unlisted = [c for c in raw[0] if c is not None and c not in META_COLUMNS and c not in categories]
    return [c for c in unlisted if any((record[c] or "").strip() for record in raw)]


def _read_index(
    filesystem,
    root: str,
    categories: list[str],
    labels: dict[int, str],
    files: set[str],
    leaving: dict[str, str] | None = None,
) -> list[IndexRow]:
    """Rows of index.csv; ``files`` are the files under images/ that it may name, ``leaving`` those refused because
    a link leads them out of the folder."""
    leaving = leaving or {}
    raw = _read_csv(filesystem, root, "index.csv", META_COLUMNS + tuple(categories))
    if not raw:
        raise ConceptDataError("concepts: index.csv lists no images; add one row per image")
    holding = _unlisted_columns_with_labels(raw, categories)
    if holding:
        first = next(number for number, record in enumerate(raw, start=1) if (record[holding[0]] or "").strip())
        raise ConceptDataError(
            f"concepts: index.csv column(s) {holding} hold labels (row {first}: {raw[first - 1][holding[0]]!r}) but "
            "category.csv does not list them; add them to category.csv (with a c_<category>.csv) or empty the "
            "column(s)"
        )
    rows = []
    for number, record in enumerate(raw, start=1):
        where = f"index.csv row {number}"
        if any((cell or "").strip() for cell in record.get(None) or ()):
            raise ConceptDataError(
                f"concepts: {where} has more cells than the header has columns; remove them or "
                "name their column in the header"
            )
        image = (record["image"] or "").strip()
        if not image:
            raise ConceptDataError(f"concepts: {where} has an empty 'image' cell; name the image file")
        if image not in files:
            raise _missing_file(where, "image", image, leaving, "add it")
        ih, iw, sh, sw = (_parse_int(record[c], f"{where}, column {c!r}", minimum=1) for c in SIZE_COLUMNS)
        entries: dict[str, tuple[int | str, ...]] = {}
        for category in categories:
            parsed: list[int | str] = []
            for entry in filter(None, (part.strip() for part in (record[category] or "").split(";"))):
                if entry.isdigit():
                    label = int(entry)
                    if label not in labels:
                        raise ConceptDataError(
                            f"concepts: {where}, column {category!r} has label id {label}, which label.csv "
                            "does not list; add it to label.csv or fix the row"
                        )
                    parsed.append(label)
                elif entry in files:
                    parsed.append(entry)
                else:
                    raise _missing_file(
                        f"{where}, column {category!r}", "mask", entry, leaving, "add the mask or fix the row"
                    )
            if parsed:
                entries[category] = tuple(parsed)
        rows.append(IndexRow(number, image, (ih, iw), (sh, sw), entries))
    return rows


def _category_kinds(categories: list[str], rows: list[IndexRow]) -> dict[str, str]:
    """A category is image-level when every cell entry is a label number (Broden's scene), else pixel-level."""
    kinds = {}
    for category in categories:
        entries = [entry for row in rows for entry in row.entries.get(category, ())]
        kinds[category] = "image" if entries and all(isinstance(e, int) for e in entries) else "pixel"
    return kinds


def load_concepts(uri: str, base_dir: Path | None = None, filesystem=None) -> ConceptSet:
    """Read and check a Broden-format folder: a local path (relative ones start at base_dir, else the working
    directory), a ``file://`` or other pyarrow-supported URI, or a path inside ``filesystem`` (pyarrow or fsspec).
    """
    import pyarrow.fs as pafs

    fs, root = _locate(str(uri), base_dir, filesystem)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise ConceptDataError(f"concepts: folder {uri!r} does not exist (looked for {root}); {BRODEN_LAYOUT}")
    if info.type != pafs.FileType.Directory:
        raise ConceptDataError(f"concepts: {uri!r} is not a folder; {BRODEN_LAYOUT}")
    if not fs.get_file_info(pafs.FileSelector(root, recursive=False)):
        raise ConceptDataError(f"concepts: folder {uri!r} is empty; {BRODEN_LAYOUT}")
    categories = _read_categories(fs, root)
    labels, label_category = _read_labels(fs, root, categories)
    if not labels:
        raise ConceptDataError("concepts: label.csv lists no labels; list at least one (number 1 upwards)")
    files = _list_files(fs, root)
    leaving = _links_leaving(fs, root, files)
    rows = _read_index(fs, root, categories, labels, files - leaving.keys(), leaving)
    return ConceptSet(fs, root, rows, labels, label_category, _category_kinds(categories, rows), str(uri))


def folder_fingerprint(uri: str, base_dir: Path | None = None, filesystem=None) -> str:
    """sha256 of a folder's CSV files and of every file's path and size under images/ (not the bytes: Broden holds
    ~1 GB of images)."""
    import pyarrow.fs as pafs

    digest = hashlib.sha256()
    fs, root = _locate(str(uri), base_dir, filesystem)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    for info in sorted(infos, key=lambda i: i.path):
        if info.type != pafs.FileType.File:
            continue
        relative = PurePosixPath(info.path[len(root) + 1 :])
        digest.update(f"{relative}\0{info.size}\0".encode())
        if relative.suffix == ".csv" and len(relative.parts) == 1:
            digest.update(read_bytes(fs, info.path, relative.name))
    return digest.hexdigest()
