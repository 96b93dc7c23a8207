"""The Parquet report store: one folder per table, hive-partitioned by model and version, published atomically.

A run's tables are first written under ``_staging/<run_id>/``, then moved into place; ``audit_runs`` is
moved last, and readers only show rows of runs listed in ``audit_runs``. A crash at any point therefore
leaves no half-written report visible. Files are never rewritten: each run adds its own files.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from data_contracts import TABLES, conform
from interp_audit.errors import NotFoundError

RUNS_TABLE = "audit_runs"
REVIEWS_TABLE = "reviews"
STAGING = "_staging"
PARTITIONING = ds.partitioning(pa.schema([("model", pa.string()), ("version", pa.string())]), flavor="hive")


@dataclass(frozen=True)
class ReportStore:
    filesystem: pafs.FileSystem
    root: str
    uri: str

    @classmethod
    def open(cls, uri: str | Path) -> ReportStore:
        """A local path or any URI pyarrow.fs understands (file://, s3://, gs://, ...)."""
        text = str(uri)
        if "://" in text:
            filesystem, root = pafs.FileSystem.from_uri(text)
        else:
            filesystem, root = pafs.LocalFileSystem(), str(Path(text).expanduser().resolve())
        return cls(filesystem, root.rstrip("/"), text)

    def _path(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    def _partition(self, table: str, model: str, version: str, base: str | None = None) -> str:
        return "/".join((base or self.root, table, f"model={model}", f"version={version}"))

    def stage(self, run_id: str, model: str, version: str, tables: dict[str, pa.Table]) -> None:
        """Write each table of the run under the staging area; nothing is visible to readers yet."""
        staging = self._path(STAGING, run_id)
        for name, table in tables.items():
            folder = self._partition(name, model, version, staging)
            self.filesystem.create_dir(folder, recursive=True)
            pq.write_table(conform(name, table), f"{folder}/{run_id}.parquet", filesystem=self.filesystem)

    def publish(self, run_id: str, model: str, version: str) -> None:
        """Move the staged tables into place, ``audit_runs`` last, then drop the staging folder."""
        staging = self._path(STAGING, run_id)
        staged = [info.base_name for info in self.filesystem.get_file_info(pafs.FileSelector(staging))]
        if RUNS_TABLE not in staged:
            raise RuntimeError(f"run {run_id}: nothing staged for {RUNS_TABLE}; refusing to publish")
        for name in sorted(staged, key=lambda table: table == RUNS_TABLE):
            target = self._partition(name, model, version)
            self.filesystem.create_dir(target, recursive=True)
            self.filesystem.move(f"{self._partition(name, model, version, staging)}/{run_id}.parquet",
                                 f"{target}/{run_id}.parquet")
        self.filesystem.delete_dir(staging)

    def tables_sha256(self, run_id: str, model: str, version: str) -> str:
        """SHA-256 over the run's published table files (reviews excluded), in table order: what a review signs."""
        digest = hashlib.sha256()
        for name in sorted(TABLES):
            path = f"{self._partition(name, model, version)}/{run_id}.parquet"
            if name == REVIEWS_TABLE or self.filesystem.get_file_info(path).type == pafs.FileType.NotFound:
                continue
            digest.update(name.encode() + b"\0")
            with self.filesystem.open_input_stream(path) as stream:
                digest.update(stream.read())
        return digest.hexdigest()

    def append(self, table: str, file_id: str, model: str, version: str, rows: pa.Table) -> None:
        """Add rows in a file of their own (reviews, requested diffs), written aside and moved into place.

        Nothing is ever rewritten, and these files are not the run's own, so they are outside ``tables_sha256``."""
        target = self._partition(table, model, version)
        if self.filesystem.get_file_info(f"{target}/{file_id}.parquet").type != pafs.FileType.NotFound:
            raise FileExistsError(f"{table}: {file_id} is recorded already and is never rewritten")
        staging = self._partition(table, model, version, self._path(STAGING, file_id))
        self.filesystem.create_dir(staging, recursive=True)
        pq.write_table(conform(table, rows), f"{staging}/{file_id}.parquet", filesystem=self.filesystem)
        self.filesystem.create_dir(target, recursive=True)
        self.filesystem.move(f"{staging}/{file_id}.parquet", f"{target}/{file_id}.parquet")
        self.filesystem.delete_dir(self._path(STAGING, file_id))

    def discard(self, run_id: str) -> None:
        staging = self._path(STAGING, run_id)
        if self.filesystem.get_file_info(staging).type != pafs.FileType.NotFound:
            self.filesystem.delete_dir(staging)

    def _dataset(self, table: str) -> ds.Dataset | None:
        folder = self._path(table)
        if self.filesystem.get_file_info(folder).type == pafs.FileType.NotFound:
            return None
        schema = TABLES[table].schema
        for field in PARTITIONING.schema:
            schema = schema.append(field)
        return ds.dataset(folder, schema=schema, format="parquet", filesystem=self.filesystem,
                          partitioning=PARTITIONING, exclude_invalid_files=False)

    def _raw(self, table: str, filter_expr=None) -> pa.Table:
        dataset = self._dataset(table)
        if dataset is None:
            schema = TABLES[table].schema
            for field in PARTITIONING.schema:
                schema = schema.append(field)
            return schema.empty_table()
        return dataset.to_table(filter=filter_expr)

    def runs(self, model: str | None = None, version: str | None = None) -> pa.Table:
        """Published runs, oldest first."""
        runs = self._raw(RUNS_TABLE, _partition_filter(model, version))
        return runs.sort_by([("started_at", "ascending"), ("run_id", "ascending")])

    def read(self, table: str, model: str | None = None, version: str | None = None,
             run_id: str | None = None) -> pa.Table:
        """A table's rows from published runs only, optionally narrowed to a model, version or run."""
        if table not in TABLES:
            raise NotFoundError(f"unknown table {table!r}; tables are: {', '.join(sorted(TABLES))}")
        published = self.runs(model, version).column("run_id")
        if run_id is not None:
            published = pa.array([r for r in published.to_pylist() if r == run_id], pa.string())
        filter_expr = pc.field("run_id").isin(published)
        partition = _partition_filter(model, version)
        if partition is not None:
            filter_expr = filter_expr & partition
        return self._raw(table, filter_expr)

    def tables_with_data(self) -> list[str]:
        return [name for name in TABLES if self._dataset(name) is not None]


def _partition_filter(model: str | None, version: str | None):
    expr = None
    for column, value in (("model", model), ("version", version)):
        if value is not None:
            term = pc.field(column) == value
            expr = term if expr is None else expr & term
    return expr
