"""How interp-audit talks to an MLflow registry: which URI, failing fast, and MLflow's errors as ours.

Every call uses one URI as both MLflow's tracking and registry URI. Unless the user set them, MLflow's HTTP
retries are switched off and its request timeout lowered for the duration of a call, so an unreachable server
raises :class:`RegistryUnavailable` in seconds; retrying is the caller's policy (Prefect task retries).
mlflow is imported inside :func:`mlflow_client`, so importing this module stays fast.
"""

from __future__ import annotations

import os
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from interp_audit.errors import AuditError, SpecError

# Fail fast unless the user configured MLflow's HTTP client themselves; Prefect retries the task.
FAIL_FAST_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


class RegistryUnavailable(AuditError):
    """The MLflow registry cannot be reached or failed while answering (exit 3); the message names the URI."""

    exit_code = 3


def default_tracking_uri(store: str) -> str:
    """MLFLOW_TRACKING_URI if set, else a local SQLite registry inside the report store.

    The local default is ``sqlite:///<abs store>/mlflow/registry.db`` (the folder is created); versions logged to
    it keep their artifacts under ``<store>/mlflow/artifacts``. The store must be a local path for the default.
    """
    configured = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if configured:
        return configured
    if store.startswith("file://"):
        store = urllib.parse.unquote(urllib.parse.urlsplit(store).path)
    if "://" in store:
        raise SpecError(
            f"report.store: '{store}' is not a local folder, so it cannot hold the default local MLflow registry; "
            f"set MLFLOW_TRACKING_URI to your registry (e.g. http://mlflow.example:5000)"
        )
    folder = Path(store).expanduser().resolve() / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'registry.db'}"


def display_uri(uri: str) -> str:
    """The URI without a password, for messages."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password:
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return uri


def sqlite_artifact_root(tracking_uri: str) -> str | None:
    """For a file-backed SQLite registry: the ``artifacts`` folder beside the database (else MLflow's choice,
    which for SQLite would be ``./mlruns`` in whatever the current directory happens to be)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = urllib.parse.unquote(tracking_uri[len("sqlite:///") :].split("?", 1)[0])
    if not path or path == ":memory:":
        return None
    return str(Path(path).expanduser().resolve().parent / "artifacts")


_env_lock = threading.Lock()
_env_users = 0
_env_set: list[str] = []


@contextmanager
def _fail_fast_env() -> Iterator[None]:
    """Set FAIL_FAST_ENV for variables the user has not set; reference-counted so concurrent calls (threads of a
    Prefect task runner) neither see them vanish early nor leave them behind."""
    global _env_users
    with _env_lock:
        if _env_users == 0:
            _env_set.clear()
            for key, value in FAIL_FAST_ENV.items():
                if key not in os.environ:
                    os.environ[key] = value
                    _env_set.append(key)
        _env_users += 1
    try:
        yield
    finally:
        with _env_lock:
            _env_users -= 1
            if _env_users == 0:
                for key in _env_set:
                    os.environ.pop(key, None)
                _env_set.clear()


def error_code(exc: BaseException) -> str | None:
    return getattr(exc, "error_code", None)


def first_line(exc: BaseException, limit: int = 400) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:limit]}" if text else type(exc).__name__


@contextmanager
def mlflow_client(tracking_uri: str):
    """An MlflowClient on ``tracking_uri``; any failure that is not already an AuditError becomes
    RegistryUnavailable (or SpecError for a URI MLflow does not support)."""
    with _fail_fast_env():
        try:
            from mlflow import MlflowClient
        except ImportError as exc:
            raise AuditError(
                f"model.source mlflow: the mlflow client is not installed ({exc}); "
                f"install it with pip install 'mlflow-skinny>=3.10,<4'"
            ) from None
        try:
            yield MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        except AuditError:
            raise
        except Exception as exc:
            if type(exc).__name__ in (
                "UnsupportedModelRegistryStoreURIException",
                "UnsupportedModelRegistryStoreURIError",
            ):
                raise SpecError(
                    f"MLflow registry URI '{display_uri(tracking_uri)}' is not supported by MLflow; give "
                    f"sqlite:///path/to/registry.db, http(s)://host:port of an MLflow server, a database URI "
                    f"(postgresql://, mysql://) or databricks, e.g. through MLFLOW_TRACKING_URI"
                ) from None
            raise RegistryUnavailable(
                f"MLflow registry at '{display_uri(tracking_uri)}' could not be used: {first_line(exc)}. "
                f"Check that the server is up and that the URI (MLFLOW_TRACKING_URI) and credentials are right"
            ) from exc
