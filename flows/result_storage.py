"""Where the audit's task results persist on a cluster: beside its report, under ``<store>/_results``, so that every worker that
can reach the report store (a local folder, or ``s3://`` on a cluster) reads the results of tasks that others
finished, and a re-run after a crash on another node reuses them as a re-run on one machine does.

Prefect takes a flow's ``result_storage`` when the flow is called (``flow.with_options(result_storage=...)``) and
hands it to every task run, on Ray workers too: it travels in the flow run's context that prefect-ray ships with
each task. A local folder is given as a path; any other store as a saved ``RemoteFileSystem`` block (Prefect
accepts no unsaved block there), whose fsspec settings carry only the store URI's endpoint: credentials stay in
the workers' environment (``AWS_ACCESS_KEY_ID``, an instance role...), never in Prefect's database.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pyarrow.fs as pafs

from interp_audit.store import ReportStore
from interp_audit.store_manifest import RESULTS


def task_result_storage(store_uri: str | Path) -> Path | str:
    """The audit flow's ``result_storage`` for the report store at ``store_uri``: the path of ``_results`` in a
    local store, else the slug of a ``RemoteFileSystem`` block saved (or updated) on the Prefect API now."""
    from prefect.filesystems import RemoteFileSystem

    store = ReportStore.open(store_uri)
    if isinstance(store.filesystem, pafs.LocalFileSystem):
        return Path(store.root, RESULTS)
    parts = urlsplit(str(store_uri))
    basepath = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}/{RESULTS}"
    settings = fsspec_settings(str(store_uri))
    name = "interp-audit-results-" + hashlib.sha256(json.dumps([basepath, settings]).encode()).hexdigest()[:16]
    RemoteFileSystem(basepath=basepath, settings=settings).save(name, overwrite=True)
    return f"remote-file-system/{name}"


def fsspec_settings(store_uri: str) -> dict:
    """The S3 endpoint and region a pyarrow store URI names in its query (``?endpoint_override=host:port&scheme=
    http&region=...``), as s3fs takes them; nothing where the URI names none (s3fs then reads the environment,
    ``AWS_ENDPOINT_URL`` included, as pyarrow does)."""
    parts = urlsplit(store_uri)
    if parts.scheme != "s3":
        return {}
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    settings = {}
    if endpoint := query.get("endpoint_override"):
        settings["endpoint_url"] = endpoint if "://" in endpoint else f"{query.get('scheme', 'https')}://{endpoint}"
    if region := query.get("region"):
        settings["client_kwargs"] = {"region_name": region}
    return settings
