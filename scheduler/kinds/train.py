"""``kind: train``: fit a model of a plugin's type on a dataset, and register it.

The payload is three sections of the spec: ``model`` (the plugin and its params, which
the plugin validates), ``data`` (where the rows come from) and ``train`` (the loop's
settings). A data file is never named by a path the server opens: the CLI uploads it
(``csv:upload:sha256:HEX``) or it lies under a data root an admin listed
(``csv:/ROOT/...``); see ``dcsched.inputs``.

Splits: ``data.test_size`` of the rows are held out for the final test metrics and
``data.validation_size`` (0 by default here; a tune job's default is 0.2) for the
per-epoch validation metrics; the rest train (``dcsched.training.splits``). With
``validation_size: 0`` the per-epoch metrics are on the test rows, as before validation
splits existed; the result says which (``validation_on``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from dcsched.core.spec import SchedulingRequest, StrictModel

DATA_SCHEMES = ("sklearn", "csv", "npz", "text")
VALIDATION_PREFIX = "val_"
"""A train job's result metrics (and its registered model's) named ``val_NAME`` are on
the validation rows; those named ``NAME`` are on the test rows."""
FILE_SCHEMES = ("csv", "npz", "text")
"""Schemes whose location is a file: uploaded by the CLI, resolved by dcsched.inputs."""


class ModelSpec(StrictModel):
    type: str = Field(
        min_length=1, max_length=64, description="Model plugin name, see `dcsched plugins list`."
    )
    params: dict[str, object] = Field(default_factory=dict, description="Checked by the plugin.")


class DataSpec(StrictModel):
    source: str = Field(
        max_length=4096,
        description="sklearn:NAME (a dataset shipped with scikit-learn), csv:FILE (a table), "
        "npz:FILE (arrays x and y, e.g. images) or text:FILE (UTF-8 text). Which ones a model "
        "type takes: `dcsched plugins show TYPE`. The CLI uploads a local FILE; on the server "
        "it reads SCHEME:upload:sha256:HEX or a path under an admin-listed data root.",
    )
    target: str | None = Field(
        None, max_length=256, description="Target column; required for csv sources."
    )
    test_size: float = Field(
        0.2, gt=0, lt=1, description="Fraction of the rows held out for the final test metrics."
    )
    validation_size: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Fraction of the rows held out for the per-epoch validation metrics, "
        "apart from the test rows; 0 (the default of train jobs): the per-epoch metrics are "
        "computed on the test rows. Tune jobs default to 0.2 and need it above 0.",
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed of the split and of training.")

    @field_validator("source")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        scheme, sep, rest = value.partition(":")
        if not sep or scheme not in DATA_SCHEMES or not rest:
            raise ValueError(
                f"data source {value!r} is not understood; use sklearn:NAME "
                "(for example sklearn:breast_cancer), csv:FILE, npz:FILE or text:FILE"
            )
        return value

    @model_validator(mode="after")
    def _csv_needs_target(self) -> DataSpec:
        if self.scheme == "csv" and not self.target:
            raise ValueError("a csv source needs `target:` naming the column to predict")
        return self

    @model_validator(mode="after")
    def _room_to_train(self) -> DataSpec:
        if self.test_size + self.validation_size >= 1:
            raise ValueError(
                f"test_size ({self.test_size}) plus validation_size ({self.validation_size}) "
                "leaves no rows to train on; their sum must be below 1"
            )
        return self

    @property
    def has_validation(self) -> bool:
        """Whether rows are held out for validation apart from the test rows."""
        return self.validation_size > 0

    @property
    def scheme(self) -> str:
        return self.source.partition(":")[0]

    @property
    def location(self) -> str:
        return self.source.partition(":")[2]


class TrainSpec(StrictModel):
    epochs: int = Field(10, ge=1, le=100_000)
    batch_size: int = Field(32, ge=1, le=1_000_000)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0, le=10)


class TrainJobSpec(SchedulingRequest):
    """A training job: the scheduling request plus model, data and train sections."""

    kind: Literal["train"] = Field(description="Fit a model and register it.")
    model: ModelSpec
    data: DataSpec
    train: TrainSpec = Field(default_factory=lambda: TrainSpec())
