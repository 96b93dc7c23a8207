"""The spec's ``model`` block: where the model comes from (torch, ONNX or an MLflow registry) and what it takes."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from interp_audit.spec.fields import FACTORY_REF, Float, NonNegativeInt, PositiveInt, SafeName, StrictModel
from interp_ops.token_grid import TokenGrid


class InputSpec(StrictModel):
    """What the model takes: samples are converted to this before they reach it."""

    shape: list[PositiveInt] = Field(description="(C, H, W) for images or (features,) for tabular models")
    range: tuple[Float, Float] = Field((0.0, 1.0), description="value range before normalization")
    mean: list[Float] | None = Field(None, description="per-channel mean subtracted after scaling to range")
    std: list[Float] | None = Field(None, description="per-channel std divided by after subtracting mean")
    class_names: list[str] | None = Field(None, description="one name per model output, in order")

    @field_validator("shape")
    @classmethod
    def _shape_rank(cls, shape: list[int]) -> list[int]:
        if len(shape) not in (1, 3):
            raise ValueError(f"must be [C, H, W] for images or [features] for tabular models (got {shape})")
        if len(shape) == 3 and shape[0] not in (1, 3):
            raise ValueError(f"images must have 1 or 3 channels (got {shape[0]} in {shape})")
        return shape

    @field_validator("range")
    @classmethod
    def _range_order(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not value[0] < value[1]:
            raise ValueError(f"must be [low, high] with low < high (got {list(value)})")
        return value

    @field_validator("std")
    @classmethod
    def _std_positive(cls, std: list[float] | None) -> list[float] | None:
        if std is not None and any(s <= 0 for s in std):
            raise ValueError(f"every std must be > 0 (got {std})")
        return std

    @model_validator(mode="after")
    def _per_channel(self) -> InputSpec:
        channels = self.shape[0] if len(self.shape) == 3 else None
        for field in ("mean", "std"):
            values = getattr(self, field)
            if values is None:
                continue
            if channels is None:
                raise ValueError(f"{field}: per-channel normalization needs an image shape [C, H, W]")
            if len(values) != channels:
                raise ValueError(f"{field}: needs one value per channel ({channels}), got {len(values)}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std: give both or neither")
        return self


class TokenLayout(StrictModel):
    """How a transformer layer's ``[batch, tokens, dim]`` output lies on the image."""

    grid: tuple[PositiveInt, PositiveInt] = Field(description="the patch tokens as [rows, cols], row by row")
    skip: NonNegativeInt = Field(0, description="leading tokens that are no patch (1 for a class token)")


class TokenLayerSpec(StrictModel):
    """A transformer layer, audited as a ``dim x rows x cols`` map: units are its dims, over the patch tokens."""

    name: str = Field(description="the module (torch) or tensor (ONNX) whose output is the tokens")
    tokens: TokenLayout


class _ModelBase(StrictModel):
    name: SafeName
    version: SafeName
    input: InputSpec
    layers: list[str | TokenLayerSpec] = Field(
        default_factory=list,
        description="internal layers to audit: a name, or {name, tokens: {grid: [rows, cols], skip}} for a "
        "transformer layer",
    )

    @property
    def layer_names(self) -> list[str]:
        return [layer if isinstance(layer, str) else layer.name for layer in self.layers]

    @property
    def token_grids(self) -> dict[str, TokenGrid]:
        """The layers declared as tokens, by name, as the ops read them."""
        return {
            layer.name: TokenGrid(*layer.tokens.grid, skip=layer.tokens.skip)
            for layer in self.layers
            if isinstance(layer, TokenLayerSpec)
        }


class TorchModelSpec(_ModelBase):
    source: Literal["torch"]
    factory: str | None = Field(
        None, description="'package.module:callable' or 'path/to/file.py:callable' (relative to the spec)"
    )
    weights: str = Field(description="state dict (.pt/.pth, loaded with weights_only=True) or .safetensors")
    trust_pickle: bool = Field(False, description="allow a whole pickled module; only for files you trust")

    @field_validator("factory")
    @classmethod
    def _factory_ref(cls, value: str | None) -> str | None:
        if value is not None and not FACTORY_REF.match(value):
            raise ValueError(f"must be 'package.module:callable' or 'path/to/file.py:callable' (got {value!r})")
        return value

    @model_validator(mode="after")
    def _factory_needed(self) -> TorchModelSpec:
        if self.factory is None and not self.trust_pickle:
            raise ValueError("factory: required to build the module that the weights (a state dict) load into")
        return self


class OnnxModelSpec(_ModelBase):
    source: Literal["onnx"]
    path: str = Field(description="path to the .onnx file (relative to the spec)")


class SklearnModelSpec(_ModelBase):
    """A scikit-learn classifier or pipeline saved with skops, converted to ONNX (skl2onnx) for the audit."""

    source: Literal["sklearn"]
    path: str = Field(description="path to the .skops file (relative to the spec); never a pickle")
    trusted: list[str] = Field(
        default_factory=list,
        description="types beyond skops' defaults the file may hold, as skops names them "
        "(skops.io.get_untrusted_types); only for files you trust",
    )

    @field_validator("input")
    @classmethod
    def _tabular(cls, value: InputSpec) -> InputSpec:
        if len(value.shape) != 1:
            raise ValueError(f"shape: a scikit-learn model takes [features] (got {value.shape})")
        return value


MLFLOW_VERSION = re.compile(r"^([1-9][0-9]*|latest|@[A-Za-z0-9_-]+)$")


class MlflowModelSpec(_ModelBase):
    """A version of a model in an MLflow registry: an ONNX-flavor model, a state dict logged with
    ``interp_audit.registry.log_model``, or (trusted only) a pickled torch module."""

    source: Literal["mlflow"]
    version: str = Field(description="a version number, 'latest', or '@alias'; the report records the number")
    tracking_uri: str | None = Field(
        None,
        description="registry location; default MLFLOW_TRACKING_URI, else a SQLite registry inside the report store",
    )
    trust_pickle: bool = Field(
        False, description="allow versions that hold a pickled module; only registries you trust"
    )
    factory: str | None = Field(
        None,
        description="for versions holding a bare state dict: 'package.module:callable' "
        "or 'file.py:callable' (versions logged with log_model record it)",
    )
    backfill: bool = Field(False, description="watch: also audit the versions that existed before the watcher started")
    alias_on_pass: SafeName | None = Field(
        None, description="alias set on the version when its audit passes, e.g. 'audited'"
    )

    _factory_ref = field_validator("factory")(TorchModelSpec._factory_ref.__func__)

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, value: Any) -> str:
        value = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        if not isinstance(value, str) or not MLFLOW_VERSION.match(value):
            raise ValueError(f"must be a version number, 'latest' or '@alias' (got {value!r})")
        return value


ModelSpec = Annotated[
    TorchModelSpec | OnnxModelSpec | SklearnModelSpec | MlflowModelSpec, Field(discriminator="source")
]
