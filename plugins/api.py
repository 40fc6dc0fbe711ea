"""The model plugin API, version 1: everything a model type is, in one class.

A model type is a ``ModelPlugin`` subclass that declares ``api_version = 1``. It owns
- its **params**: ``params_model``, a ``StrictModel`` (pydantic: extra fields refused,
  frozen, no inf or NaN; the base of every spec model, re-exported here);
- its **data**: ``data_sources`` (the ``data.source`` schemes it accepts: ``sklearn``,
  ``csv``, ``npz``, ``text``), ``check_data`` (cheap, run by the server at submit; never
  imports torch) and ``load_data`` (on the worker: a ``Dataset`` of train, validation
  and test rows, plus the preprocessing fitted on the training rows);
- its **metrics**: ``metrics``, per task, the names it reports, the default objective and
  its direction;
- its **model**: ``create`` a ``TrainedModel``, whose ``fit`` trains (reporting each epoch
  with validation metrics, checkpointing every epoch, resuming from a checkpoint),
  ``evaluate`` scores held-out rows, ``predict`` answers a batch of JSON-decoded inputs
  described by ``input_schema``, and ``save`` writes everything ``ModelPlugin.load``
  needs, the fitted preprocessing included (``load`` + ``predict`` on raw inputs gives
  the answers of evaluation).

Optional hooks with working defaults (Lightning's split: the plugin says *what*, the
runner says *how*): ``search_space`` (for tuning), ``default_resources``, ``gpu``
(whether it can use one), ``multi_worker`` (whether ``fit`` trains data-parallel through
``dcsched.training.distributed``; the runner provides DDP for torch models) and
``uses_torch`` (the runner imports torch, sets threads and picks a device only for
plugins that say so; a non-torch plugin's job never imports torch).

The tabular defaults (``sklearn:``/``csv:`` sources, standardised float32 features, the
classification and regression metrics) live in ``dcsched.training.data`` and
``dcsched.training.evaluation`` and are imported lazily. A model of such data subclasses
``TabularModel``, which gives ``predict`` on raw rows, ``prepare`` and ``input_schema``
from the preprocessing it keeps (``dcsched.plugins.tabular``).

Adding a model type from another package
----------------------------------------
Declare the class as an entry point in the group ``dcsched.models``::

    [project.entry-points."dcsched.models"]
    gbm = "my_package.gbm:GBMPlugin"

and ``pip install`` the package wherever the server and the Ray workers run. The
entry-point name is what users write as ``model.type`` and must equal the plugin's
``name``. Listing plugins imports each plugin module but never torch: keep heavy imports
inside functions. A plugin whose ``api_version`` differs from ``API_VERSION`` is listed
as broken and refused at submit. Full guide: docs/plugins.md.

Invariants and words:
- ``params_model`` forbids extra fields (checked when the class is defined).
- Tabular features reach ``fit`` standardised, as float32 ``(n, n_features)``; targets
  are int64 class indices ``0..k-1`` (sorted order of ``DatasetInfo.classes``) for
  classifiers and float32 values for regression.
- ``predict_arrays`` returns class probabilities ``(n, k)`` for classifiers (binary too)
  and values ``(n,)`` for regression; ``predict`` returns one JSON value per input.
- epoch: one pass over the training set (or one round of boosting); numbered from 1.
- parts: a ``Dataset`` holds train, test and, when ``DataSpec.validation_size`` > 0,
  validation rows (``x_val``/``y_val``; None otherwise), disjoint. ``fit`` never sees
  the test rows when there is a validation part: the runner passes it
  ``Dataset.for_fit()``, whose test part *is* the validation part.
- validation metrics in an epoch report are computed on ``Dataset.validation``: the
  validation part, or the test part when a job has none (``validation_size: 0``, the
  default of ``kind: train``; ``kind: tune`` always has one).
- version 1 stays: ``x_val``/``y_val`` are optional fields with defaults, so a plugin
  written before them (building ``Dataset`` without them, validating on ``x_test`` in
  ``fit``) works unchanged and validates on the validation part through ``for_fit``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ValidationError

# re-exported: the base of a plugin's params_model, as of every spec model
from dcsched.core.spec import StrictModel as StrictModel

if TYPE_CHECKING:
    from dcsched.kinds.train import DataSpec, TrainSpec
    from dcsched.plugins.tabular import Preprocessing

API_VERSION = 1
"""The version of this API; a plugin declaring another is refused (listed as broken)."""

TaskType = Literal["binary", "multiclass", "regression"]
TASK_TYPES: tuple[str, ...] = get_args(TaskType)
Direction = Literal["maximize", "minimize"]

ClassLabel = int | str
"""A class label as it appears in the data (an int, or a string for text targets)."""

FloatArray = npt.NDArray[np.floating[Any]]
TargetArray = npt.NDArray[Any]
"""int64 class indices for classifiers, float32 values for regression."""

CLASSIFIER_METRICS = ("accuracy", "precision", "recall", "f1", "log_loss")
REGRESSION_METRICS = ("mse", "rmse", "mae", "r2")


@dataclass(frozen=True, slots=True)
class MetricSet:
    """The metrics a model reports for one task, and which one to optimise."""

    names: tuple[str, ...]
    objective: str
    direction: Direction

    def __post_init__(self) -> None:
        if self.objective not in self.names:
            raise ValueError(f"objective {self.objective!r} is not one of {self.names}")
        if self.direction not in ("maximize", "minimize"):
            raise ValueError(f"direction must be maximize or minimize, not {self.direction!r}")

    def to_json(self) -> dict[str, Any]:
        return {"names": list(self.names), "objective": self.objective, "direction": self.direction}


TABULAR_METRICS: dict[str, MetricSet] = {
    "binary": MetricSet(CLASSIFIER_METRICS, "f1", "maximize"),
    "multiclass": MetricSet(CLASSIFIER_METRICS, "accuracy", "maximize"),
    "regression": MetricSet(REGRESSION_METRICS, "r2", "maximize"),
}


@dataclass(frozen=True, slots=True)
class DatasetInfo:
    """What a model needs to know about its data before seeing it."""

    task: TaskType
    n_features: int
    classes: tuple[ClassLabel, ...]
    """Original class labels in sorted order; index i is class index i. Empty for regression."""
    feature_names: tuple[str, ...]
    input_shape: tuple[int, ...] = ()
    """Shape of one raw input when it is not a flat feature vector (an image: (h, w))."""

    def __post_init__(self) -> None:
        if self.task not in TASK_TYPES:
            raise ValueError(f"task must be one of {', '.join(TASK_TYPES)}, not {self.task!r}")
        if self.n_features < 1 or len(self.feature_names) != self.n_features:
            raise ValueError(
                f"n_features is {self.n_features} but {len(self.feature_names)} feature names "
                "were given"
            )
        expected = {"binary": "exactly 2", "multiclass": "at least 3", "regression": "no"}
        ok = {
            "binary": len(self.classes) == 2,
            "multiclass": len(self.classes) >= 3,
            "regression": len(self.classes) == 0,
        }
        if not ok[self.task]:
            raise ValueError(
                f"a {self.task} task has {expected[self.task]} classes, got {len(self.classes)}"
            )

    @property
    def n_classes(self) -> int:
        """Number of classes; 0 for regression."""
        return len(self.classes)

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "n_features": self.n_features,
            "classes": list(self.classes),
            "feature_names": list(self.feature_names),
            "input_shape": list(self.input_shape),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DatasetInfo:
        return cls(
            task=data["task"],
            n_features=int(data["n_features"]),
            classes=tuple(data["classes"]),
            feature_names=tuple(str(name) for name in data["feature_names"]),
            input_shape=tuple(int(n) for n in data.get("input_shape", ())),
        )


@dataclass(frozen=True)
class Dataset:
    """A plugin's data, split, ready for ``fit``: what ``ModelPlugin.load_data`` returns.

    ``preprocessing`` is the JSON of whatever was fitted on the training rows (a scaler,
    a vocabulary); the model saves it and applies it in ``predict``. ``x_val``/``y_val``:
    the validation rows (``DataSpec.validation_size``), both None when the job has none.
    """

    x_train: npt.NDArray[Any]
    y_train: npt.NDArray[Any]
    x_test: npt.NDArray[Any]
    y_test: npt.NDArray[Any]
    info: DatasetInfo
    preprocessing: Mapping[str, Any] = field(default_factory=dict)
    x_val: npt.NDArray[Any] | None = None
    y_val: npt.NDArray[Any] | None = None

    def __post_init__(self) -> None:
        if (self.x_val is None) != (self.y_val is None):
            raise ValueError("give both x_val and y_val, or neither")
        if self.x_val is not None and self.y_val is not None and len(self.x_val) != len(self.y_val):
            raise ValueError(f"{len(self.x_val)} validation inputs but {len(self.y_val)} targets")

    @property
    def n_train(self) -> int:
        return len(self.x_train)

    @property
    def n_test(self) -> int:
        return len(self.x_test)

    @property
    def n_val(self) -> int:
        return 0 if self.x_val is None else len(self.x_val)

    @property
    def has_validation(self) -> bool:
        return self.x_val is not None

    @property
    def validation(self) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
        """(inputs, targets) that per-epoch validation metrics are computed on: the
        validation part, or the test part when there is none."""
        if self.x_val is not None and self.y_val is not None:
            return self.x_val, self.y_val
        return self.x_test, self.y_test

    def for_fit(self) -> Dataset:
        """What the runner passes to ``fit``: with a validation part, the test rows are
        withheld (the test part is the validation part); without one, this dataset."""
        if self.x_val is None or self.y_val is None:
            return self
        return replace(self, x_test=self.x_val, y_test=self.y_val)


@dataclass(frozen=True, slots=True)
class EpochReport:
    """Progress after one epoch."""

    epoch: int
    """1-based epoch number, counted over the whole run (a resumed run continues the count)."""
    loss: float
    """Mean training loss over the epoch, weighted by the samples in each batch."""
    samples_per_s: float
    seconds: float
    metrics: Mapping[str, float] = field(default_factory=dict)
    """Validation metrics after this epoch (on ``Dataset.validation``), by name."""


@dataclass(frozen=True, slots=True)
class Resources:
    """A plugin's suggested per-worker resources (``dcsched plugins show``)."""

    cpus: float = 1.0
    gpus: int = 0
    memory: str = "1GiB"

    def to_json(self) -> dict[str, Any]:
        return {"cpus": self.cpus, "gpus": self.gpus, "memory": self.memory}


EpochCallback = Callable[[EpochReport], None]


class TrainedModel(ABC):
    """A model of one plugin for one dataset: trained by ``fit``, then used or saved."""

    @property
    @abstractmethod
    def info(self) -> DatasetInfo:
        """The dataset the model was created for."""

    @abstractmethod
    def fit(
        self,
        data: Dataset,
        train: TrainSpec,
        seed: int,
        on_epoch: EpochCallback,
        checkpoint_dir: Path | None,
    ) -> None:
        """Train for ``train.epochs`` epochs in all, deterministically for a given seed.

        When ``checkpoint_dir`` holds a checkpoint, training resumes after its epoch (and
        does nothing if it already reached ``train.epochs``); otherwise it starts from
        fresh. A checkpoint is written atomically after every epoch, before ``on_epoch``
        is called with that epoch's report (validation metrics on ``data.validation``;
        the runner passes ``Dataset.for_fit()``, so ``data.x_test`` is the same rows).
        """

    @abstractmethod
    def predict_arrays(self, x: npt.NDArray[Any]) -> FloatArray:
        """Class probabilities ``(n, n_classes)`` for classifiers, values ``(n,)`` otherwise,
        of inputs already preprocessed (as in ``Dataset.x_test``)."""

    @abstractmethod
    def predict(self, inputs: Sequence[Any]) -> list[Any]:
        """One JSON value per raw, JSON-decoded input (each matching ``input_schema``)."""

    def prepare(self, features: FloatArray) -> npt.NDArray[Any]:
        """Optional: raw feature rows ``(n, n_features)`` (float64, columns in
        ``info.feature_names`` order) to the inputs of ``predict_arrays``, the saved
        preprocessing applied, vectorised; ValueError for rows it cannot take. Batch
        inference uses it when a plugin has it; the default raises NotImplementedError and
        batch inference calls ``predict`` on each row's list of values instead (slower)."""
        raise NotImplementedError

    @abstractmethod
    def input_schema(self) -> dict[str, Any]:
        """JSON schema of one input of ``predict``."""

    @abstractmethod
    def save(self, directory: Path) -> None:
        """Write everything ``ModelPlugin.load`` needs into ``directory`` (created if absent),
        the fitted preprocessing included."""

    def evaluate(self, x: npt.NDArray[Any], y: npt.NDArray[Any]) -> dict[str, float]:
        """Metrics on held-out rows; the default computes the tabular ones."""
        from dcsched.training.evaluation import evaluate

        return evaluate(self.info, y, self.predict_arrays(x))


class TabularModel(TrainedModel):
    """A ``TrainedModel`` of tabular data (the default data hooks) that keeps the
    preprocessing fitted on its training rows in ``preprocessing`` (``fit`` sets it from
    ``Dataset.preprocessing``, ``save`` writes it, ``load`` restores it). It gives
    ``predict`` on raw rows (an object ``{feature: number}`` or a list in feature order;
    one ``{"label", "probabilities"}`` per row for classifiers, a number for regression),
    its vectorised form ``prepare`` (batch inference) and ``input_schema``."""

    preprocessing: Mapping[str, Any]

    def predict(self, inputs: Sequence[Any]) -> list[Any]:
        from dcsched.plugins.tabular import format_outputs

        return format_outputs(self.info, self.predict_arrays(self.scaler().transform(inputs)))

    def prepare(self, features: FloatArray) -> npt.NDArray[Any]:
        return self.scaler().transform_array(features)

    def input_schema(self) -> dict[str, Any]:
        from dcsched.plugins.tabular import input_schema

        return input_schema(self.info)

    def scaler(self) -> Preprocessing:
        """The fitted scaler of ``preprocessing``, built once per value of it (batch
        inference calls ``prepare`` for every batch)."""
        from dcsched.plugins.tabular import Preprocessing

        built = self.__dict__.get("_scaler_of")
        if built is None or built[0] is not self.preprocessing:
            built = (self.preprocessing, Preprocessing.from_json(self.preprocessing, self.info))
            self._scaler_of = built
        scaler: Preprocessing = built[1]
        return scaler


class PluginParamsError(ValueError):
    """``model.params`` that the plugin refuses; ``problems`` has one line per issue."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from: unreadable, or written for another job."""


class DataError(ValueError):
    """Data the plugin cannot use; ``problems`` has one line per issue (as SpecError)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


class ModelPlugin(ABC):
    """A model type. Subclasses set ``api_version``, ``name``, ``description`` and
    ``params_model``, and implement ``create`` and ``load``; every other hook has a
    default that fits tabular data."""

    api_version: ClassVar[int]
    """The plugin API this plugin was written for; must equal ``API_VERSION``."""
    name: ClassVar[str]
    """The ``model.type`` users write; equal to the entry-point name."""
    description: ClassVar[str]
    """One line for ``dcsched plugins list``."""
    params_model: ClassVar[type[BaseModel]]
    """Schema of ``model.params``; must forbid extra fields."""
    data_sources: ClassVar[tuple[str, ...]] = ("sklearn", "csv")
    """The ``data.source`` schemes the plugin accepts."""
    metrics: ClassVar[Mapping[str, MetricSet]] = TABULAR_METRICS
    """By task: the metric names reported, the default objective and its direction."""
    multi_worker: ClassVar[bool] = False
    """Whether ``fit`` trains data-parallel on a gang (``resources.workers > 1``) through
    ``dcsched.training.distributed``; a plugin that does not is refused more workers."""
    gpu: ClassVar[bool] = False
    """Whether the model can use a GPU (a job asking for GPUs is refused otherwise)."""
    uses_torch: ClassVar[bool] = False
    """Whether the runner should import torch, set its threads and pick a device."""
    default_resources: ClassVar[Resources] = Resources()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        params_model = cls.__dict__.get("params_model")
        if params_model is not None and params_model.model_config.get("extra") != "forbid":
            raise TypeError(
                f"{cls.__name__}.params_model must set model_config extra='forbid' so that "
                "misspelt parameters are refused"
            )

    def validate_params(self, params: Mapping[str, Any]) -> BaseModel:
        """Return the checked parameters, or raise PluginParamsError with one line per issue."""
        try:
            return self.params_model.model_validate(dict(params))
        except ValidationError as exc:
            raise PluginParamsError(self._describe(exc)) from None

    def params_schema(self) -> dict[str, Any]:
        """JSON schema of ``model.params`` (defaults and descriptions included)."""
        return self.params_model.model_json_schema()

    def search_space(self) -> dict[str, Any]:
        """A default search space over ``model.params`` for tuning: name to
        ``{"type": "int"|"float"|"categorical", "low", "high", "log", "choices"}``.
        The default is empty (nothing to tune)."""
        return {}

    def check_data(self, data: DataSpec) -> None:
        """Raise SpecError/DataError if ``data`` cannot be used; cheap: the server calls it
        at submit time (no torch, no reading whole files). Default: tabular sources."""
        from dcsched.core.spec import SpecError

        if data.scheme not in self.data_sources:
            raise SpecError(
                [
                    f"data.source: model type {self.name!r} does not take {data.scheme} data; "
                    f"it takes: {', '.join(self.data_sources)}"
                ]
            )
        from dcsched.training.data import check_source

        check_source(data)

    def load_data(self, data: DataSpec) -> Dataset:
        """Load and split ``data`` (on the worker) into train, validation and test parts
        (``dcsched.training.splits``). Default: tabular, standardised."""
        from dcsched.training.data import load_dataset

        prepared = load_dataset(data)
        return Dataset(
            x_train=prepared.x_train,
            y_train=prepared.y_train,
            x_test=prepared.x_test,
            y_test=prepared.y_test,
            x_val=prepared.x_val,
            y_val=prepared.y_val,
            info=prepared.info,
            preprocessing={
                "feature_names": list(prepared.info.feature_names),
                "mean": prepared.scaler_mean.tolist(),
                "scale": prepared.scaler_scale.tolist(),
            },
        )

    @abstractmethod
    def create(self, params: BaseModel, info: DatasetInfo, device: str) -> TrainedModel:
        """A new, untrained model for data described by ``info`` on ``device`` (cpu, cuda)."""

    @abstractmethod
    def load(self, directory: Path, device: str) -> TrainedModel:
        """A model written by ``TrainedModel.save``; it predicts exactly as the saved one."""

    def describe(self) -> dict[str, Any]:
        """What ``dcsched plugins show`` prints (JSON)."""
        return {
            "api_version": self.api_version,
            "description": self.description,
            "params_schema": self.params_schema(),
            "data_sources": list(self.data_sources),
            "metrics": {task: metric_set.to_json() for task, metric_set in self.metrics.items()},
            "search_space": self.search_space(),
            "resources": self.default_resources.to_json(),
            "gpu": self.gpu,
            "multi_worker": self.multi_worker,
            "uses_torch": self.uses_torch,
        }

    def _describe(self, exc: ValidationError) -> list[str]:
        known = ", ".join(self.params_model.model_fields) or "none"
        lines = []
        for error in exc.errors():
            path = ".".join(["model", "params", *(str(part) for part in error["loc"])])
            if error["type"] == "extra_forbidden":
                message = f"unknown parameter of {self.name}; it takes: {known}"
            elif error["type"] == "missing":
                message = "required parameter is missing"
            else:
                message = error["msg"].removeprefix("Value error, ")
            lines.append(f"{path}: {message}")
        return lines
