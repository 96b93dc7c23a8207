"""The Parquet report store: one folder per table, hive-partitioned by model and version; a run is exactly the
files its manifest lists.

A run's tables are written under ``_staging/<run_id>/``, moved into their table folders, and then its manifest,
``_manifests/<run_id>.json`` (each file's path, row count and SHA-256), is written: the manifest is the commit.
Readers read the files that manifests list and nothing else, so a crash before the manifest leaves nothing
visible (and a commit that fails there, rather than crashes, takes back the files it moved), and a file put into
a table folder by anyone else is never shown as a run's data (``check`` reports it as foreign). Appended records
(reviews, requested diffs) are committed the same way, each with a manifest of its own. Files are never
rewritten; a sign-off hashes the files of the run's manifest (``tables_sha256``).

This module opens, writes and reads a store; the layout and manifest format are in ``store_manifest``,
and ``check``, ``adopt`` and ``gc`` in ``store_housekeeping``.
"""

from __future__ import annotations

import errno
import hashlib
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from data_contracts import TABLES, conform
from interp_audit.errors import NotFoundError, SpecError
from interp_audit.store_housekeeping import StoreCheck, StoreHousekeeping
from interp_audit.store_manifest import (
    APPENDED_TABLES,
    MANIFEST_FORMAT,
    MANIFESTS,
    PARTITIONING,
    REVIEWS_TABLE,
    RUNS_TABLE,
    STAGING,
    Manifest,
    PublishedFile,
    partition,
)

__all__ = [
    "APPENDED_TABLES",
    "MANIFESTS",
    "MANIFEST_FORMAT",
    "OUT_OF_SPACE",
    "PARTITIONING",
    "REVIEWS_TABLE",
    "RUNS_TABLE",
    "STAGING",
    "Manifest",
    "PublishedFile",
    "ReportStore",
    "StoreCheck",
    "out_of_space",
]

OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)


def out_of_space(exc: BaseException) -> str | None:
    """The reason ("No space left on device", "Disk quota exceeded") when ``exc`` is a write that failed for want
    of space or quota, else None. pyarrow raises an OSError whose errno is often None, with the C library's
    message in its text, so both are looked at."""
    if not isinstance(exc, OSError):
        return None
    for code in OUT_OF_SPACE:
        if exc.errno == code or os.strerror(code) in str(exc):
            return os.strerror(code)
    return None


@dataclass(frozen=True)
class ReportStore(StoreHousekeeping):
    filesystem: pafs.FileSystem
    root: str
    uri: str
    _manifests: dict = field(default_factory=dict, compare=False, repr=False)  # name -> Manifest; never rewritten

    @classmethod
    def open(cls, uri: str | Path) -> ReportStore:
        """A local path or any URI pyarrow.fs understands (file://, s3://, gs://, hdfs://)."""
        text = str(uri)
        if "://" in text:
            try:
                filesystem, root = pafs.FileSystem.from_uri(text)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
                raise SpecError(
                    f"report store {text!r}: {' '.join(str(exc).split())}; give a local path or a URI "
                    "pyarrow can open (file://, s3://, gs://, hdfs://)"
                ) from None
        else:
            filesystem, root = pafs.LocalFileSystem(), str(Path(text).expanduser().resolve())
        return cls(filesystem, root.rstrip("/") or "/", text)

    def check_usable(self) -> None:
        """Refuse (exit 2) a store that cannot hold a report: a file where its folder should be, a folder that
        cannot be written, a remote store that cannot be reached or whose bucket does not exist. Writes nothing."""
        if isinstance(self.filesystem, pafs.LocalFileSystem):
            path = Path(self.root)
            existing = next(p for p in (path, *path.parents) if p.exists() or p == p.parent)
            if not existing.is_dir():
                raise SpecError(
                    f"report store {self.uri!r}: {existing} is a file, not a folder; point report.store "
                    "(or --store) at a folder"
                )
            if not os.access(existing, os.W_OK | os.X_OK):
                raise SpecError(
                    f"report store {self.uri!r}: {existing} is not writable by this user; choose "
                    "another report.store or fix the folder's permissions"
                )
            return
        try:
            info = self.filesystem.get_file_info(self.root)
        except OSError as exc:
            raise SpecError(f"report store {self.uri!r} cannot be reached: {' '.join(str(exc).split())}") from None
        if info.type == pafs.FileType.File:
            raise SpecError(f"report store {self.uri!r} is a file, not a folder; point report.store at a folder")
        bucket = self.root.split("/")[0]
        if self.filesystem.type_name in ("s3", "gcs") and self.filesystem.get_file_info(bucket).type != (
            pafs.FileType.Directory
        ):  # else the audit would compute for minutes and fail at its first write
            raise SpecError(
                f"report store {self.uri!r}: bucket {bucket!r} does not exist; create it, or point report.store "
                "at a bucket that does"
            )

    def exists(self) -> bool:
        return self.filesystem.get_file_info(self.root).type == pafs.FileType.Directory

    def _path(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    def _exists(self, path: str) -> bool:
        return self.filesystem.get_file_info(path).type != pafs.FileType.NotFound

    def _sha256(self, relative: str) -> str:
        digest = hashlib.sha256()
        with self.filesystem.open_input_stream(self._path(relative)) as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()

    # ------------------------------------------------------------------------------------------- writing

    def stage(self, run_id: str, model: str, version: str, tables: dict[str, pa.Table]) -> None:
        """Write each table of the run under the staging area; nothing is visible to readers yet."""
        for name, table in tables.items():
            folder = self._path(STAGING, run_id, partition(name, model, version))
            self.filesystem.create_dir(folder, recursive=True)
            pq.write_table(conform(name, table), f"{folder}/{run_id}.parquet", filesystem=self.filesystem)

    def publish(self, run_id: str, model: str, version: str) -> Manifest:
        """Move the staged tables into place, then commit them with the run's manifest and drop the staging."""
        staged = [
            info.base_name for info in self.filesystem.get_file_info(pafs.FileSelector(self._path(STAGING, run_id)))
        ]
        if RUNS_TABLE not in staged:
            raise RuntimeError(f"run {run_id}: nothing staged for {RUNS_TABLE}; refusing to publish")
        # audit_runs moves last: a run whose audit_runs file is in place has all its tables in place
        return self._commit(run_id, "run", run_id, model, version, sorted(staged, key=lambda t: (t == RUNS_TABLE, t)))

    def append(self, table: str, file_id: str, model: str, version: str, rows: pa.Table) -> None:
        """Add rows in a file of their own (reviews, requested diffs), committed by a manifest of their own.

        Nothing is ever rewritten, and these files are not the run's own, so they are outside ``tables_sha256``."""
        if self._exists(self._path(MANIFESTS, f"{file_id}.json")) or self._exists(
            self._path(partition(table, model, version), f"{file_id}.parquet")
        ):
            raise FileExistsError(f"{table}: {file_id} is recorded already and is never rewritten")
        run_ids = set(rows.column("run_id").to_pylist())
        if len(run_ids) != 1:
            raise ValueError(f"{table}: an appended record belongs to one run, got {sorted(map(str, run_ids))}")
        self.stage(file_id, model, version, {table: rows})
        self._commit(file_id, "append", run_ids.pop(), model, version, [table])

    def _commit(self, commit_id: str, kind: str, run_id: str, model: str, version: str, tables: list[str]) -> Manifest:
        files = []
        for name in tables:
            relative = f"{partition(name, model, version)}/{commit_id}.parquet"
            staged = self._path(STAGING, commit_id, relative)
            rows = pq.ParquetFile(self.filesystem.open_input_file(staged)).metadata.num_rows
            files.append(PublishedFile(name, relative, self._sha256(f"{STAGING}/{commit_id}/{relative}"), rows))
        manifest = Manifest(commit_id, kind, run_id, model, version, datetime.now(UTC).isoformat(), tuple(files))
        moved = []
        try:
            for published in files:
                self.filesystem.create_dir(self._path(published.path.rsplit("/", 1)[0]), recursive=True)
                self.filesystem.move(self._path(STAGING, commit_id, published.path), self._path(published.path))
                moved.append(published.path)
            self._write_manifest(manifest)
        except BaseException:
            self._take_back(commit_id, moved)
            raise
        return manifest

    def _take_back(self, commit_id: str, moved: list[str]) -> None:
        """Remove the table files a failed commit moved into place, unless its manifest made it after all. Left
        there, no reader would show them, but they would hold space until ``gc``, and once the ``audit_runs`` file
        is among them ``adopt`` would take them for a run written before manifests. A crash leaves them to ``gc``."""
        if self._exists(self._path(MANIFESTS, f"{commit_id}.json")):
            return
        for path in moved:
            self.filesystem.delete_file(self._path(path))

    def _write_manifest(self, manifest: Manifest) -> None:
        """Write the manifest aside, then move it into ``_manifests/`` (the commit) and drop the staging folder."""
        staged = self._path(STAGING, manifest.commit_id, "manifest.json")
        self.filesystem.create_dir(self._path(STAGING, manifest.commit_id), recursive=True)
        with self.filesystem.open_output_stream(staged) as stream:
            stream.write(manifest.to_json())
        self.filesystem.create_dir(self._path(MANIFESTS), recursive=True)
        self.filesystem.move(staged, self._path(MANIFESTS, f"{manifest.commit_id}.json"))
        self.filesystem.delete_dir(self._path(STAGING, manifest.commit_id))

    def discard(self, run_id: str) -> None:
        if self._exists(self._path(STAGING, run_id)):
            self.filesystem.delete_dir(self._path(STAGING, run_id))

    # ------------------------------------------------------------------------------------------- reading

    def manifests(self) -> list[Manifest]:
        """Every commit, oldest first; unreadable manifests are skipped here and reported by ``check``."""
        return [manifest for manifest in self._read_manifests().values() if isinstance(manifest, Manifest)]

    def _read_manifests(self) -> dict[str, Manifest | str]:
        """Manifest file name -> its manifest, or the reason it cannot be read."""
        folder = self._path(MANIFESTS)
        if not self._exists(folder):
            return {}
        found = {}
        for info in sorted(self.filesystem.get_file_info(pafs.FileSelector(folder)), key=lambda i: i.base_name):
            if info.base_name not in self._manifests:
                try:
                    with self.filesystem.open_input_stream(info.path) as stream:
                        manifest = Manifest.from_json(stream.read())
                    if f"{manifest.commit_id}.json" != info.base_name:
                        raise ValueError(f"names commit {manifest.commit_id}")
                    self._manifests[info.base_name] = manifest
                except (ValueError, TypeError, KeyError, OSError) as exc:
                    found[info.base_name] = f"unreadable manifest ({type(exc).__name__}: {exc})"
                    continue
            found[info.base_name] = self._manifests[info.base_name]
        return found

    def _read_files(self, table: str, paths: list[str], filter_expr=None) -> pa.Table:
        schema = TABLES[table].schema
        for column in PARTITIONING.schema:
            schema = schema.append(column)
        if not paths:
            return schema.empty_table()
        dataset = ds.dataset(
            [self._path(path) for path in paths],
            schema=schema,
            format="parquet",
            filesystem=self.filesystem,
            partitioning=PARTITIONING,
            partition_base_dir=self._path(table),
        )
        return dataset.to_table(filter=filter_expr)

    def runs(self, model: str | None = None, version: str | None = None) -> pa.Table:
        """Published runs, oldest first."""
        paths = [
            file.path
            for manifest in self.manifests()
            if manifest.kind == "run"
            and (model is None or manifest.model == model)
            and (version is None or manifest.version == version)
            for file in manifest.files
            if file.table == RUNS_TABLE
        ]
        runs = self._read_files(RUNS_TABLE, paths)
        return runs.sort_by([("started_at", "ascending"), ("run_id", "ascending")])

    def read(
        self, table: str, model: str | None = None, version: str | None = None, run_id: str | None = None
    ) -> pa.Table:
        """A table's rows from the files published runs and their records committed, optionally narrowed to a
        model, version or run; rows are only shown as the run their manifest names."""
        if table not in TABLES:
            raise NotFoundError(f"unknown table {table!r}; tables are: {', '.join(sorted(TABLES))}")
        published = set(self.runs(model, version).column("run_id").to_pylist())
        if run_id is not None:
            published &= {run_id}
        paths = [
            file.path
            for manifest in self.manifests()
            if manifest.run_id in published
            and (model is None or manifest.model == model)
            and (version is None or manifest.version == version)
            for file in manifest.files
            if file.table == table
        ]
        filter_expr = pc.field("run_id").isin(pa.array(sorted(published), pa.string()))
        return self._read_files(table, paths, filter_expr)

    def tables_with_data(self) -> list[str]:
        listed = {file.table for manifest in self.manifests() for file in manifest.files}
        return [name for name in TABLES if name in listed]

    def tables_sha256(self, run_id: str) -> str:
        """SHA-256 over the files the run's manifest lists (path and current content of each): what a sign-off
        signs. Any change to those files, or to the manifest's list, changes it."""
        manifest = self._run_manifest(run_id)
        digest = hashlib.sha256()
        for file in sorted(manifest.files, key=lambda f: f.path):
            current = self._sha256(file.path) if self._exists(self._path(file.path)) else "missing"
            digest.update(f"{file.path}\0{current}\n".encode())
        return digest.hexdigest()

    def _run_manifest(self, run_id: str) -> Manifest:
        for manifest in self.manifests():
            if manifest.kind == "run" and manifest.run_id == run_id:
                return manifest
        raise NotFoundError(f"no published run {run_id!r} in {self.uri}")
