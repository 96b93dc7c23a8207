"""MLflow model registry access: resolve a version, fetch what it holds, log audit-ready versions, write results back.

Every call talks to the registry named by one URI (a version's artifacts live with its run or logged model in the
tracking store), through :mod:`interp_audit.mlflow_connection`, which fails fast and maps MLflow's errors to ours.

What a downloaded version holds, and the layout :func:`log_model` writes, is :mod:`interp_audit.model_artifacts`
(nothing there unpickles). mlflow is imported inside the functions, so importing this module (and
``interp-audit validate``) stays fast.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from interp_audit.errors import SpecError
from interp_audit.mlflow_connection import (
    default_tracking_uri,
    display_uri,
    error_code,
    first_line,
    mlflow_client,
    sqlite_artifact_root,
)
from interp_audit.model_artifacts import FetchedModel, classify, shorten, write_model_files
from interp_audit.spec import FACTORY_REF, SAFE_NAME

if TYPE_CHECKING:  # pragma: no cover
    import torch

MODEL_DIR = "model"  # artifact path of log_model's files inside its run
EXPERIMENT = "interp-audit"  # the experiment log_model's runs go to
TAG_STATUS, TAG_RUN_ID, TAG_REPORT = "interp_audit.status", "interp_audit.run_id", "interp_audit.report"


def _check_name(name: str) -> None:
    if not isinstance(name, str) or ".." in name or not SAFE_NAME.match(name):
        raise SpecError(
            f"model.name: {name!r} is not a name interp-audit can audit; use letters, digits, '.', '_' or '-' "
            f"(it becomes a directory in the report store)"
        )


# --------------------------------------------------------------------------------------------------------------
# Versions


def _versions(client, name: str) -> list[str]:
    found: list[str] = []
    token = None
    while True:
        page = client.search_model_versions(f"name = '{name}'", max_results=1000, page_token=token)
        found.extend(str(version.version) for version in page)
        token = getattr(page, "token", None)
        if not token:
            break
    return sorted(set(found), key=int)


def _model_exists(client, name: str) -> bool:
    try:
        client.get_registered_model(name)
    except Exception as exc:
        if error_code(exc) == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return True


def _missing_model(client, tracking_uri: str, name: str) -> SpecError:
    names = sorted(model.name for model in client.search_registered_models(max_results=200))
    return SpecError(
        f"model.name: no registered model '{name}' in the MLflow registry at '{display_uri(tracking_uri)}'; "
        f"registered models: {shorten(names)}. Check the name, or the registry URI (MLFLOW_TRACKING_URI)"
    )


def list_versions(tracking_uri: str, name: str) -> list[str]:
    """All version numbers of ``name``, ascending (numerically); [] when the model does not exist yet."""
    _check_name(name)
    with mlflow_client(tracking_uri) as client:
        return _versions(client, name)


def resolve_version(tracking_uri: str, name: str, version: str) -> str:
    """Turn a spec's ``model.version`` into a version number that exists.

    ``'3'`` -> ``'3'`` (checked to exist), ``'latest'`` -> the highest version number (MLflow 3 deprecates
    ``get_latest_versions``, whose "latest" was per stage), ``'@champion'`` -> the version the alias points at.
    A missing model, version or alias is a SpecError that lists what exists; an unreachable registry is
    RegistryUnavailable.
    """
    _check_name(name)
    version = str(version).strip()
    if not (version.isdigit() or version == "latest" or (version.startswith("@") and len(version) > 1)):
        raise SpecError(
            f"model.version: {version!r} is not a version of a registered model; give a version "
            f"number ('3'), 'latest' or an alias ('@champion')"
        )
    with mlflow_client(tracking_uri) as client:
        if version.startswith("@"):
            alias = version[1:]
            if not _model_exists(client, name):
                raise _missing_model(client, tracking_uri, name)
            try:
                return str(client.get_model_version_by_alias(name, alias).version)
            except Exception as exc:
                if error_code(exc) not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                    raise
            aliases = client.get_registered_model(name).aliases or {}
            listed = [f"@{key} (version {value})" for key, value in sorted(aliases.items())]
            raise SpecError(
                f"model.version: {name} has no alias '@{alias}'; aliases: {shorten(listed)}. "
                f"Set it in MLflow or give a version number or 'latest'"
            )
        versions = _versions(client, name)
        if not versions:
            if not _model_exists(client, name):
                raise _missing_model(client, tracking_uri, name)
            raise SpecError(
                f"model.version: {name} has no versions yet; register one (e.g. with "
                f"interp_audit.registry.log_model) before auditing it"
            )
        if version == "latest":
            return versions[-1]
        if str(int(version)) not in versions:
            raise SpecError(f"model.version: {name} has no version {version}; versions: {shorten(versions)}")
        return str(int(version))


# --------------------------------------------------------------------------------------------------------------
# Fetching


def _download_source(client, name: str, version: str) -> str:
    """The artifact URI of a version, resolving MLflow 3 logged-model sources (``models:/m-<id>``) ourselves:
    MLflow's own ``models:/`` resolution consults the process-global registry URI, not ours."""
    source = client.get_model_version_download_uri(name, version)
    for _ in range(5):
        if not source.startswith("models:/"):
            return source
        parts = source[len("models:/") :].strip("/").split("/")
        if "@" in parts[0]:  # models:/<name>@<alias>[/path]
            other_name, alias = parts[0].split("@", 1)
            other_version = client.get_model_version_by_alias(other_name, alias).version
            base, extra = client.get_model_version_download_uri(other_name, str(other_version)), parts[1:]
        elif len(parts) == 1 or (parts[0].startswith("m-") and not parts[1].isdigit()):  # models:/<model_id>
            base, extra = client.get_logged_model(parts[0]).artifact_location, parts[1:]
        else:  # models:/<name>/<version>[/path]: another registered version
            base, extra = client.get_model_version_download_uri(parts[0], parts[1]), parts[2:]
        source = "/".join([base.rstrip("/"), *extra])
    return source


def _check_version_exists(client, tracking_uri: str, name: str, version: str) -> None:
    """A version that does not exist raises resolve_version's SpecError, which lists what does."""
    try:
        client.get_model_version(name, version)
    except Exception as exc:
        if error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
            raise
        resolve_version(tracking_uri, name, version)
        raise


def fetch_model(tracking_uri: str, name: str, version: str, dest_dir: Path, trust_pickle: bool) -> FetchedModel:
    """Download a version's artifacts and say what they hold.

    The files land in ``dest_dir/<name>-v<version>/`` (replacing an earlier download of the same version, so a
    retried task starts clean). Recognised: our state-dict layout (see :func:`log_model`), MLflow's onnx flavor,
    MLflow's pytorch flavor in pickle format and a lone .pt/.pth pickle (only with ``trust_pickle``), and a lone
    .onnx / .safetensors / plain state-dict .pt file. Anything else is a SpecError naming the files. Nothing is
    unpickled here. ``version`` may also be 'latest' or '@alias'; it is resolved first.
    """
    _check_name(name)
    version = str(version)
    if not version.isdigit():
        version = resolve_version(tracking_uri, name, version)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / f"{name}-v{version}"
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=dest_dir))
    try:
        with mlflow_client(tracking_uri) as client:
            _check_version_exists(client, tracking_uri, name, version)
            source = _download_source(client, name, version)
            import mlflow.artifacts

            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=source, dst_path=str(staging), tracking_uri=tracking_uri, registry_uri=tracking_uri
                )
            )
        if final.exists():
            shutil.rmtree(final)
        if local.is_dir():
            os.replace(local, final)
        else:
            final.mkdir()
            os.replace(local, final / local.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return classify(final, name, version, trust_pickle)


# --------------------------------------------------------------------------------------------------------------
# Logging and writing back


def _experiment_id(client, tracking_uri: str) -> str:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(EXPERIMENT, artifact_location=sqlite_artifact_root(tracking_uri))
    except Exception as exc:
        if error_code(exc) != "RESOURCE_ALREADY_EXISTS":  # created by a concurrent call
            raise
        return client.get_experiment_by_name(EXPERIMENT).experiment_id


def log_model(
    model: torch.nn.Module, name: str, factory: str, tracking_uri: str | None = None, tags: dict | None = None
) -> str:
    """Register a new version of ``name`` that interp-audit can rebuild without unpickling; returns its number.

    The version holds ``model.state_dict()`` as safetensors plus an ``MLmodel`` file whose ``interp_audit`` flavor
    names the factory ('pkg.mod:fn', or 'file.py:fn' whose file is copied into the version, so it rebuilds
    anywhere). Why not ``mlflow.pytorch.log_model``: its pickle format pickles the whole module (loading it runs
    code, and the class must be importable unchanged), and its MLflow 3 default, a torch.export program, loses the
    named layers an audit hooks; neither keeps a factory to rebuild the module from.

    The files go to a run of the ``interp-audit`` experiment (for a SQLite registry: ``artifacts/`` beside the
    database). ``tracking_uri`` defaults to :func:`default_tracking_uri` of ``./reports``; the registered model
    is created if missing. ``tags`` become version tags.
    """
    tracking_uri = tracking_uri or default_tracking_uri("./reports")
    return register_version(name, log_model_files(model, name, factory, tracking_uri, tags), tracking_uri)


@dataclass(frozen=True)
class LoggedModel:
    """A model's files in an MLflow run, not yet a version (``register_version`` makes it one)."""

    run_id: str
    tags: dict[str, str]


def log_model_files(
    model: torch.nn.Module, name: str, factory: str, tracking_uri: str, tags: dict | None = None
) -> LoggedModel:
    """The files of ``log_model``, logged to a new run: registering them later takes one quick call."""
    import torch

    _check_name(name)
    if not isinstance(model, torch.nn.Module):
        raise SpecError(f"log_model: expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(factory, str) or not FACTORY_REF.match(factory):
        raise SpecError(
            f"log_model: factory must be 'package.module:callable' or 'path/to/file.py:callable' (got {factory!r})"
        )
    with tempfile.TemporaryDirectory(prefix="interp-audit-log-") as tmp:
        folder = Path(tmp) / MODEL_DIR
        folder.mkdir()
        weights_sha256 = write_model_files(model, factory, folder)["weights_sha256"]
        version_tags = {"interp_audit.factory": factory, "interp_audit.weights_sha256": weights_sha256}
        version_tags.update({str(key): str(value) for key, value in (tags or {}).items()})
        with mlflow_client(tracking_uri) as client:
            run = client.create_run(
                _experiment_id(client, tracking_uri), run_name=f"log_model {name}", tags={"interp_audit.model": name}
            )
            run_id = run.info.run_id
            try:
                client.log_artifacts(run_id, str(folder), MODEL_DIR)
            except BaseException:
                client.set_terminated(run_id, "FAILED")
                raise
            client.set_terminated(run_id)
    return LoggedModel(run_id, version_tags)


def register_version(name: str, logged: LoggedModel, tracking_uri: str) -> str:
    """Make logged files the next version of ``name`` (created if missing); returns its number."""
    with mlflow_client(tracking_uri) as client:
        if not _model_exists(client, name):
            try:
                client.create_registered_model(name)
            except Exception as exc:
                if error_code(exc) != "RESOURCE_ALREADY_EXISTS":
                    raise
        run_source = f"runs:/{logged.run_id}/{MODEL_DIR}"
        created = client.create_model_version(name, run_source, run_id=logged.run_id, tags=logged.tags)
        return str(created.version)


def write_back(
    tracking_uri: str, name: str, version: str, *, status: str, run_id: str, report: str, alias: str | None = None
) -> None:
    """Tag the version with the audit's outcome (interp_audit.status / .run_id / .report) and, when given, point
    ``alias`` at it (the caller decides: only for passed audits). A leading '@' on the alias is ignored."""
    _check_name(name)
    version = str(version)
    if not version.isdigit():
        raise SpecError(f"write_back: version must be a version number (got {version!r}); resolve it first")
    with mlflow_client(tracking_uri) as client:
        _check_version_exists(client, tracking_uri, name, version)
        for key, value in ((TAG_STATUS, status), (TAG_RUN_ID, run_id), (TAG_REPORT, report)):
            client.set_model_version_tag(name, version, key, str(value))
        if alias:
            alias = alias.removeprefix("@")
            try:
                client.set_registered_model_alias(name, alias, version)
            except Exception as exc:
                if error_code(exc) != "INVALID_PARAMETER_VALUE":
                    raise
                raise SpecError(
                    f"alias: MLflow rejects the alias '{alias}' ({first_line(exc, 200)}); use "
                    f"letters, digits, '_' and '-', not 'latest' or 'v<number>'"
                ) from None
