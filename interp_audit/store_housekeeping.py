"""Keeping a report store honest: ``check`` finds what no manifest accounts for, ``adopt`` records the runs of
stores written before manifests, and ``gc`` removes the debris of commits that never completed."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from data_contracts import TABLES
from interp_audit.store_manifest import (
    APPENDED_TABLES,
    BLOBS,
    MANIFESTS,
    PARTITION_PATH,
    RUNS_TABLE,
    STAGING,
    Manifest,
    PublishedFile,
    commit_id_of,
    looks_like_commit_id,
)


@dataclass(frozen=True)
class StoreCheck:
    """What ``check`` found besides the published files. Staging leftovers and orphans (files of commits that
    never completed) are crash debris that ``gc`` removes; foreign files were put there by someone else;
    modified or missing files are published files whose content no longer matches their manifest; unrecorded
    files are whole runs (their ``audit_runs`` file included) and their reviews with no manifest, as stores
    written before manifests hold them: ``adopt`` records them, ``gc`` never removes them."""

    published: int
    staging: list[str]
    orphans: list[str]
    foreign: list[str]
    modified: list[str]
    missing: list[str]
    bad_manifests: list[str]
    unrecorded: list[str]

    @property
    def intact(self) -> bool:
        return not (self.foreign or self.modified or self.missing or self.bad_manifests or self.unrecorded)


class StoreHousekeeping:
    """The housekeeping half of ``ReportStore``, mixed into it: it walks the store through the store's own file
    system, paths, hashes and manifests (``filesystem``, ``root``, ``_path``, ``_exists``, ``_sha256``,
    ``_read_manifests``, ``_write_manifest``)."""

    def check(self, verify: bool = True) -> StoreCheck:
        """Everything in the table folders that no manifest lists, staging leftovers and, with ``verify``, the
        published files whose content no longer matches their manifest."""
        manifests, committed, listed, unlisted = self._inventory()
        staging = self._staging_dirs()
        interrupted = {path.removeprefix(f"{STAGING}/") for path in staging}
        unrecorded = {path for paths in self._unrecorded(unlisted, committed).values() for path in paths}
        orphans, foreign = [], []
        for path in unlisted:
            if path in unrecorded:
                continue
            commit = commit_id_of(path)
            is_orphan = (
                commit is not None
                and commit not in committed
                and (commit in interrupted or looks_like_commit_id(commit))
            )
            (orphans if is_orphan else foreign).append(path)
        modified, missing = [], []
        if verify:
            for path, file in sorted(listed.items()):
                if not self._exists(self._path(path)):
                    missing.append(path)
                elif self._sha256(path) != file.sha256:
                    modified.append(path)
        return StoreCheck(
            published=len(listed),
            staging=staging,
            orphans=sorted(orphans),
            foreign=sorted(foreign),
            modified=modified,
            missing=missing,
            bad_manifests=[
                f"{MANIFESTS}/{name}: {reason}" for name, reason in manifests.items() if isinstance(reason, str)
            ],
            unrecorded=sorted(unrecorded),
        )

    def _inventory(self) -> tuple[dict[str, Manifest | str], set[str], dict[str, PublishedFile], list[str]]:
        """Manifests by file name, the committed ids, the files they list by path, and the table files they don't."""
        manifests = self._read_manifests()
        committed = {name.removesuffix(".json") for name in manifests}
        listed = {
            file.path: file
            for manifest in manifests.values()
            if isinstance(manifest, Manifest)
            for file in manifest.files
        }
        return manifests, committed, listed, [path for path in self._table_files() if path not in listed]

    def _unrecorded(self, unlisted: list[str], committed: set[str]) -> dict[tuple[str, str, str], list[str]]:
        """Runs complete on disk but recorded by no manifest, as (run id, model, version) -> their files: every
        unlisted ``<run_id>.parquet`` of the run's partitions once its ``audit_runs`` file is there (it is moved
        last), and the unlisted reviews and requested diffs of those runs."""
        runs = {}
        for path in unlisted:
            match = PARTITION_PATH.match(path)
            commit = commit_id_of(path)
            if match and match["table"] == RUNS_TABLE and commit is not None and commit not in committed:
                runs[(commit, match["model"], match["version"])] = []
        by_run = {key[0]: key for key in runs}
        for path in unlisted:
            match, commit = PARTITION_PATH.match(path), commit_id_of(path)
            if match is None or commit is None:
                continue
            if (commit, match["model"], match["version"]) in runs:
                runs[(commit, match["model"], match["version"])].append(path)
            elif match["table"] in APPENDED_TABLES and looks_like_commit_id(commit) and commit not in committed:
                owner = self._single_run_id(path)
                if owner in by_run:
                    runs[by_run[owner]].append(path)
        return runs

    def _single_run_id(self, relative: str) -> str | None:
        try:
            run_ids = set(
                pq.read_table(self._path(relative), columns=["run_id"], filesystem=self.filesystem)
                .column("run_id")
                .to_pylist()
            )
        except (pa.ArrowException, OSError):
            return None
        return run_ids.pop() if len(run_ids) == 1 else None

    def adopt(self) -> list[Manifest]:
        """Record, with manifests, the runs that are complete on disk but have none (stores written before
        manifests): each run's own files as its run commit, each of its reviews and requested diffs as a record.
        Their files are hashed as they are now; nothing is moved or rewritten."""
        _, committed, _, unlisted = self._inventory()
        adopted = []
        for (run_id, model, version), paths in sorted(self._unrecorded(unlisted, committed).items()):
            own = [path for path in paths if commit_id_of(path) == run_id]
            adopted.append(self._record(run_id, "run", run_id, model, version, own))
            for path in sorted(set(paths) - set(own)):
                adopted.append(self._record(commit_id_of(path), "append", run_id, model, version, [path]))
        return adopted

    def _record(self, commit_id: str, kind: str, run_id: str, model: str, version: str, paths: list[str]) -> Manifest:
        files = tuple(
            PublishedFile(
                PARTITION_PATH.match(path)["table"],
                path,
                self._sha256(path),
                pq.ParquetFile(self.filesystem.open_input_file(self._path(path))).metadata.num_rows,
            )
            for path in sorted(paths)
        )
        manifest = Manifest(commit_id, kind, run_id, model, version, datetime.now(UTC).isoformat(), files)
        self._write_manifest(manifest)
        return manifest

    def foreign_files(self) -> list[str]:
        """Files in the table folders that no commit made (neither published nor crash debris); listing only."""
        return self.check(verify=False).foreign

    def gc(self, grace_seconds: float) -> list[str]:
        """Remove the debris of commits that never completed (``gc_debris``) and the task-input blobs no run has
        put (``gc_blobs``), each untouched for ``grace_seconds``: ``interp-audit store gc``."""
        return self.gc_debris(grace_seconds) + self.gc_blobs(grace_seconds)

    def gc_debris(self, grace_seconds: float) -> list[str]:
        """Remove staging folders and orphaned table files untouched for ``grace_seconds`` (a live run's staging
        and publishing are younger than that). Published, foreign, modified and unrecorded files are never
        touched; neither are blobs (``gc_blobs``)."""
        found = self.check(verify=False)
        debris: dict[str, list[str]] = {}  # commit id -> its staging folder and orphaned files
        for staging in found.staging:
            debris.setdefault(staging.removeprefix(f"{STAGING}/"), []).append(staging)
        for orphan in found.orphans:
            debris.setdefault(orphan.rsplit("/", 1)[1].removesuffix(".parquet"), []).append(orphan)
        removed = []
        for paths in debris.values():
            if time.time() - max(map(self._newest_mtime, paths)) < grace_seconds:
                continue  # possibly a live run: its files are younger than the grace period
            for path in sorted(paths, key=lambda p: p.startswith(STAGING)):  # orphans first, their staging last
                if path.startswith(STAGING):
                    self.filesystem.delete_dir(self._path(path))
                else:
                    self.filesystem.delete_file(self._path(path))
                removed.append(path)
        return removed

    def gc_blobs(self, grace_seconds: float) -> list[str]:
        """Remove the task-input blobs no run has put for ``grace_seconds`` (a run puts its blobs as it starts, and
        puts one again once older than ``interp_audit.blobs.REFRESH_AFTER_SECONDS``)."""
        removed = []
        for blob in self._blobs():
            if time.time() - self._newest_mtime(blob) >= grace_seconds:
                self.filesystem.delete_file(self._path(blob))
                removed.append(blob)
        return removed

    def _blobs(self) -> list[str]:
        folder = self._path(BLOBS)
        if not self._exists(folder):
            return []
        return sorted(f"{BLOBS}/{info.base_name}" for info in self.filesystem.get_file_info(pafs.FileSelector(folder)))

    def _newest_mtime(self, relative: str) -> float:
        """A file's modification time, or the newest of a folder's contents (the folder's own when empty)."""
        info = self.filesystem.get_file_info(self._path(relative))
        times = [info.mtime]
        if info.type == pafs.FileType.Directory:
            times += [
                item.mtime
                for item in self.filesystem.get_file_info(pafs.FileSelector(self._path(relative), recursive=True))
            ]
        return max((t.timestamp() for t in times if t is not None), default=0.0)

    def _table_files(self) -> list[str]:
        paths = []
        for table in TABLES:
            folder = self._path(table)
            if self._exists(folder):
                paths += [
                    info.path.removeprefix(self.root + "/")
                    for info in self.filesystem.get_file_info(pafs.FileSelector(folder, recursive=True))
                    if info.type != pafs.FileType.Directory
                ]
        return sorted(paths)

    def _staging_dirs(self) -> list[str]:
        folder = self._path(STAGING)
        if not self._exists(folder):
            return []
        return sorted(
            f"{STAGING}/{info.base_name}" for info in self.filesystem.get_file_info(pafs.FileSelector(folder))
        )
