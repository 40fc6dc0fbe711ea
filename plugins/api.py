"""The model plugin API: what a model type must provide to be trained by dcsched.

A model type is a ``ModelPlugin`` subclass. The training runner finds it by name, checks
the job's ``model.params`` with ``validate_params``, builds a ``TrainedModel`` with
``create`` and calls ``fit``, ``predict`` and ``save`` on it; ``load`` brings a saved
model back. The built-in ``mlp`` plugin (``dcsched.plugins.mlp``) is the reference
implementation.

Adding a model type from another package
----------------------------------------
Write a ``ModelPlugin`` subclass and declare it as an entry point in the group
``dcsched.models`` of your package's ``pyproject.toml``::

    [project.entry-points."dcsched.models"]
    gbm = "my_package.gbm:GBMPlugin"

then ``pip install`` the package wherever the scheduler and the Ray workers run. The
entry-point name (``gbm``) is what users write as ``model.type`` and must equal the
plugin's ``name``. ``dcsched plugins list`` shows installed plugins without importing
torch, so keep heavy imports (torch, jax, ...) inside functions and methods.

Invariants and words:
- ``params_model`` is a pydantic model with ``extra="forbid"`` (checked when the class is
  defined): a misspelt parameter is an error, never a silent default.
- Features reach the model standardised, as float32 of shape ``(n, n_features)``.
  Targets are int64 class indices ``0..k-1`` (in the sorted order of
  ``DatasetInfo.classes``) for classifiers and float32 values for regression.
- ``predict`` returns class probabilities of shape ``(n, k)`` for classifiers (binary
  too: two columns) and values of shape ``(n,)`` for regression.
- epoch: one pass over the training set; epochs are numbered from 1.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ValidationError

from dcsched.kinds.train import TrainSpec

TaskType = Literal["binary", "multiclass", "regression"]
TASK_TYPES: tuple[str, ...] = get_args(TaskType)

ClassLabel = int | str
"""A class label as it appears in the data (an int, or a string for text targets)."""

FloatArray = npt.NDArray[np.floating[Any]]
TargetArray = npt.NDArray[Any]
"""int64 class indices for classifiers, float32 values for regression."""


@dataclass(frozen=True, slots=True)
class DatasetInfo:
    """What a model needs to know about its data before seeing it."""

    task: TaskType
    n_features: int
    classes: tuple[ClassLabel, ...]
    """Original class labels in sorted order; index i is class index i. Empty for regression."""
    feature_names: tuple[str, ...]

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
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DatasetInfo:
        return cls(
            task=data["task"],
            n_features=int(data["n_features"]),
            classes=tuple(data["classes"]),
            feature_names=tuple(str(name) for name in data["feature_names"]),
        )


@dataclass(frozen=True, slots=True)
class EpochReport:
    """Progress after one epoch."""

    epoch: int
    """1-based epoch number, counted over the whole run (a resumed run continues the count)."""
    loss: float
    """Mean training loss over the epoch, weighted by the samples in each batch."""
    samples_per_s: float
    seconds: float


class TrainedModel(ABC):
    """A model of one plugin for one dataset: trained by ``fit``, then used or saved."""

    @property
    @abstractmethod
    def info(self) -> DatasetInfo:
        """The dataset the model was created for."""

    @abstractmethod
    def fit(
        self,
        x_train: FloatArray,
        y_train: TargetArray,
        train: TrainSpec,
        seed: int,
        on_epoch: Callable[[EpochReport], None],
        checkpoint_dir: Path | None,
    ) -> None:
        """Train for ``train.epochs`` epochs in all, deterministically for a given seed.

        When ``checkpoint_dir`` holds a checkpoint, training resumes after its epoch (and
        does nothing if it already reached ``train.epochs``); otherwise it starts from
        fresh weights. A checkpoint is written atomically after every epoch, before
        ``on_epoch`` is called with that epoch's report.
        """

    @abstractmethod
    def predict(self, x: FloatArray) -> FloatArray:
        """Class probabilities ``(n, n_classes)`` for classifiers, values ``(n,)`` otherwise."""

    @abstractmethod
    def save(self, directory: Path) -> None:
        """Write everything ``ModelPlugin.load`` needs into ``directory`` (created if absent)."""


class PluginParamsError(ValueError):
    """``model.params`` that the plugin refuses; ``problems`` has one line per issue."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from: unreadable, or written for another job."""


class ModelPlugin(ABC):
    """A model type. Subclasses set the three class attributes and implement two methods."""

    name: ClassVar[str]
    """The ``model.type`` users write; equal to the entry-point name."""
    description: ClassVar[str]
    """One line for ``dcsched plugins list``."""
    params_model: ClassVar[type[BaseModel]]
    """Schema of ``model.params``; must forbid extra fields."""
    multi_worker: ClassVar[bool] = False
    """Whether ``fit`` trains data-parallel on a gang (``resources.workers > 1``) through
    ``dcsched.training.distributed``; a plugin that does not is refused more workers."""

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
        """JSON schema of ``model.params``."""
        return self.params_model.model_json_schema()

    @abstractmethod
    def create(self, params: BaseModel, info: DatasetInfo, device: str) -> TrainedModel:
        """A new, untrained model for data described by ``info`` on ``device`` (cpu, cuda)."""

    @abstractmethod
    def load(self, directory: Path, device: str) -> TrainedModel:
        """A model written by ``TrainedModel.save``; it predicts exactly as the saved one."""

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
