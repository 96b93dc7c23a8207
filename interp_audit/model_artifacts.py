"""The files of a registered model version: the layout ``registry.log_model`` writes, and what a downloaded
version holds (:func:`classify`).

Nothing here unpickles: a pickled torch module is recognised from the MLflow layout or, for a lone torch file,
statically by torch's own checkpoint scanner, and handed on only when the spec says ``trust_pickle: true``.
No MLflow here: :mod:`interp_audit.registry` talks to the registry and hands the downloaded folder to
:func:`classify`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import yaml

from interp_audit.errors import AuditError, SpecError
from interp_audit.hashing import sha256_file

if TYPE_CHECKING:  # pragma: no cover
    import torch

FLAVOR = "interp_audit"
"""Our MLmodel flavor: a safetensors state dict plus the factory that rebuilds the module it loads into."""
FORMAT = "state_dict/v1"
WEIGHTS_FILE = "state_dict.safetensors"
MAX_LISTED = 40
TORCH_SUFFIXES = (".pt", ".pth", ".bin")


@dataclass(frozen=True)
class FetchedModel:
    """What a downloaded model version holds.

    ``kind`` is ``onnx`` (``path`` is the .onnx file), ``state_dict`` (``path`` is a .safetensors file, or a
    .pt/.pth that statically holds only tensors; ``factory`` rebuilds the module, or is None when the version does
    not say and the spec's ``model.factory`` must) or ``pickle`` (``path`` is a pickled torch module, handed out
    only with ``trust_pickle``).
    """

    kind: Literal["onnx", "state_dict", "pickle"]
    path: str
    factory: str | None
    sha256: str


def shorten(items: list[str]) -> str:
    """A list for a message: all of it, or its first 5 and last items up to MAX_LISTED in all."""
    if not items:
        return "(none)"
    if len(items) <= MAX_LISTED:
        return ", ".join(items)
    return ", ".join(items[:5]) + ", ..., " + ", ".join(items[-(MAX_LISTED - 5) :])


def write_model_files(model: torch.nn.Module, factory: str, folder: Path) -> dict:
    """Write our layout into ``folder``: the state dict as safetensors, a 'file.py:fn' factory's file under
    ``code/``, and the ``MLmodel`` file naming them; returns the flavor it records."""
    import torch
    from safetensors.torch import save_file

    target = factory.rsplit(":", 1)[0]
    flavor: dict = {
        "format": FORMAT,
        "weights": WEIGHTS_FILE,
        "factory": factory,
        "torch_version": str(torch.__version__),
    }
    if target.endswith(".py"):
        source = Path(target).expanduser().resolve()
        if not source.is_file():
            raise SpecError(f"log_model: factory file '{target}' does not exist (resolved to {source})")
        (folder / "code").mkdir()
        shutil.copy2(source, folder / "code" / source.name)
        flavor["factory_file"] = f"code/{source.name}"
    # safetensors refuses tensors that share memory; contiguous copies keep tied weights loadable.
    state = {key: value.detach().cpu().contiguous().clone() for key, value in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    flavor["weights_sha256"] = sha256_file(folder / WEIGHTS_FILE)
    mlmodel = {"flavors": {FLAVOR: flavor}, "utc_time_created": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")}
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel, sort_keys=False))
    return flavor


def holds_only_tensors(path: Path) -> bool:
    """True when a torch file is a checkpoint that ``torch.load(weights_only=True)`` reads without any global
    outside torch's allowlist (tensors, storages, dtypes, plain containers): a state dict. Read statically by
    ``torch.serialization.get_unsafe_globals_in_checkpoint``, which executes nothing. A file it cannot read
    (legacy non-zip format, TorchScript, a pickle protocol other than torch.save's default 2, a damaged archive)
    counts as a pickle."""
    import torch

    try:
        return not torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        return False


def _listing(root: Path) -> list[str]:
    if root.is_file():
        return [root.name]
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


def _inside(root: Path, relative: str, what: str, name: str, version: str) -> Path:
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()) or not path.is_file():
        raise SpecError(
            f"model.version: {name} version {version}: its MLmodel names {what} '{relative}', which is "
            f"not a file of the version (files: {shorten(_listing(root))})"
        )
    return path


def _refuse_pickle(name: str, version: str, relative: str, how: str) -> SpecError:
    return SpecError(
        f"model.trust_pickle: {name} version {version} holds a pickled torch module ({relative}, {how}); loading it "
        f"runs whatever code the pickle names, so interp-audit refuses it unless the spec sets "
        f"`model.trust_pickle: true`. Set that only if you trust whoever registered this version, or register the "
        f"weights as a state dict with interp_audit.registry.log_model (or as ONNX) instead"
    )


def classify(root: Path, name: str, version: str, trust_pickle: bool) -> FetchedModel:
    """What the downloaded files of ``name`` version ``version`` under ``root`` hold (see registry.fetch_model)."""
    files = _listing(root)
    mlmodels = [item for item in files if item.rsplit("/", 1)[-1] == "MLmodel"]
    if len(mlmodels) == 1:
        model_root = (root / mlmodels[0]).parent
        try:
            mlmodel = yaml.safe_load((model_root / "MLmodel").read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise SpecError(
                f"model.version: {name} version {version}: its MLmodel file is not valid YAML "
                f"({' '.join(str(exc).split())[:200]})"
            ) from None
        flavors = mlmodel.get("flavors") if isinstance(mlmodel, dict) else None
        flavors = flavors if isinstance(flavors, dict) else {}
        if isinstance(flavors.get(FLAVOR), dict):
            conf = flavors[FLAVOR]
            weights = _inside(model_root, str(conf.get("weights", WEIGHTS_FILE)), "weights", name, version)
            digest = sha256_file(weights)
            if conf.get("weights_sha256") and conf["weights_sha256"] != digest:
                raise AuditError(
                    f"model.version: {name} version {version}: the downloaded weights do not match the "
                    f"sha256 recorded when they were logged; the artifact store holds a damaged or "
                    f"replaced file ({weights.name}); re-register the version"
                )
            factory = conf.get("factory")
            if conf.get("factory_file"):  # a 'file.py:fn' factory travels with the version
                code = _inside(model_root, str(conf["factory_file"]), "factory file", name, version)
                factory = f"{code}:{str(factory).rsplit(':', 1)[1]}"
            return FetchedModel("state_dict", str(weights), factory, digest)
        if isinstance(flavors.get("onnx"), dict):
            onnx_file = _inside(model_root, str(flavors["onnx"].get("data", "model.onnx")), "ONNX file", name, version)
            return FetchedModel("onnx", str(onnx_file), None, sha256_file(onnx_file))
        if isinstance(flavors.get("pytorch"), dict):
            data_dir = model_root / str(flavors["pytorch"].get("model_data", "data"))
            pickled, exported = data_dir / "model.pth", data_dir / "model.pt2"
            if pickled.is_file():
                relative = str(pickled.relative_to(root))
                if not trust_pickle:
                    raise _refuse_pickle(name, version, relative, "MLflow's pytorch flavor, pickle format")
                return FetchedModel("pickle", str(pickled), None, sha256_file(pickled))
            if exported.is_file():
                raise SpecError(
                    f"model.version: {name} version {version} holds a torch.export program "
                    f"({exported.relative_to(root)}, MLflow 3's default PyTorch format), which interp-audit cannot "
                    f"audit: it needs the module's named layers. Register the model with "
                    f"interp_audit.registry.log_model (state dict + factory), as ONNX (mlflow.onnx.log_model), or "
                    f"with mlflow.pytorch.log_model(..., serialization_format='pickle') and trust_pickle: true"
                )
        raise SpecError(
            f"model.version: {name} version {version} is an MLflow model with flavors "
            f"{', '.join(sorted(flavors)) or '(none)'}, none of which interp-audit can audit; it reads the "
            f"'{FLAVOR}' (interp_audit.registry.log_model), 'onnx' and 'pytorch' flavors. "
            f"Files: {shorten(files)}"
        )
    if len(mlmodels) > 1:
        raise SpecError(
            f"model.version: {name} version {version} holds {len(mlmodels)} MLmodel files "
            f"({', '.join(mlmodels)}); register one model per version"
        )

    def single(suffixes: tuple[str, ...]) -> list[Path]:
        return [root / item for item in files if item.lower().endswith(suffixes)]

    onnx_files, tensors, torch_files = single((".onnx",)), single((".safetensors",)), single(TORCH_SUFFIXES)
    if len(onnx_files) == 1 and not tensors and not torch_files:
        return FetchedModel("onnx", str(onnx_files[0]), None, sha256_file(onnx_files[0]))
    if len(tensors) == 1 and not onnx_files and not torch_files:
        return FetchedModel("state_dict", str(tensors[0]), None, sha256_file(tensors[0]))
    if len(torch_files) == 1 and not onnx_files and not tensors:
        path = torch_files[0]
        if holds_only_tensors(path):
            return FetchedModel("state_dict", str(path), None, sha256_file(path))
        if not trust_pickle:
            raise _refuse_pickle(name, version, str(path.relative_to(root)), "a torch file with Python objects")
        return FetchedModel("pickle", str(path), None, sha256_file(path))
    raise SpecError(
        f"model.version: {name} version {version} holds no model interp-audit can read (files: {shorten(files)}); "
        f"register an MLflow onnx or pytorch model, or a state dict with interp_audit.registry.log_model"
    )
