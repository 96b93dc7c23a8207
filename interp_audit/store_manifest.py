"""The report store's layout and its manifest format: where a commit's files lie, and the JSON record
(``_manifests/<commit_id>.json``) whose arrival makes them visible."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.dataset as ds

RUNS_TABLE = "audit_runs"
REVIEWS_TABLE = "reviews"
APPENDED_TABLES = (REVIEWS_TABLE, "version_diffs")  # records appended to a run after it is published
STAGING = "_staging"
BLOBS = "_blobs"  # content-addressed task inputs (interp_audit.blobs), outside every table and manifest
RESULTS = "_results"  # Prefect's persisted task results (flows.result_storage), outside them too
MANIFESTS = "_manifests"
MANIFEST_FORMAT = 1
PARTITIONING = ds.partitioning(pa.schema([("model", pa.string()), ("version", pa.string())]), flavor="hive")
PARTITION_PATH = re.compile(r"^(?P<table>[^/]+)/model=(?P<model>[^/]+)/version=(?P<version>[^/]+)/(?P<name>[^/]+)$")
COMMIT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def partition(table: str, model: str, version: str) -> str:
    """A table's folder for one model version, relative to the store's root."""
    return f"{table}/model={model}/version={version}"


def commit_id_of(path: str) -> str | None:
    """The commit a table file belongs to by its name (``<commit_id>.parquet`` in a model/version partition)."""
    match = PARTITION_PATH.match(path)
    return match["name"].removesuffix(".parquet") if match and match["name"].endswith(".parquet") else None


def looks_like_commit_id(name: str) -> bool:
    """Run ids are Prefect flow-run UUIDs and record ids UUIDs: anything else was not written by a commit."""
    return bool(COMMIT_ID.fullmatch(name or ""))


@dataclass(frozen=True)
class PublishedFile:
    table: str
    path: str  # relative to the store's root
    sha256: str
    rows: int


@dataclass(frozen=True)
class Manifest:
    """What one commit published: a run's tables (``kind="run"``) or one appended record (``kind="append"``)."""

    commit_id: str
    kind: str
    run_id: str
    model: str
    version: str
    published_at: str
    files: tuple[PublishedFile, ...]

    def to_json(self) -> bytes:
        return json.dumps({"format": MANIFEST_FORMAT, **asdict(self)}, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        content = json.loads(data)
        if content.pop("format", None) != MANIFEST_FORMAT:
            raise ValueError(f"not a manifest of format {MANIFEST_FORMAT}")
        files = tuple(PublishedFile(**entry) for entry in content.pop("files"))
        return cls(files=files, **content)
