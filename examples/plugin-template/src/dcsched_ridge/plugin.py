"""The ``ridge`` model type: linear regression with an L2 penalty, trained by minibatch
SGD in NumPy (no torch, no scikit-learn estimator), one worker.

It shows every part of a plugin in about 200 lines:
- params: a pydantic model that forbids extra fields (``RidgeParams``);
- data: the default tabular sources (``sklearn:NAME``, ``csv:FILE``), standardised by
  dcsched; the fitted scaler (``Dataset.preprocessing``) is saved with the model;
- metrics: the regression set (mse, rmse, mae, r2; objective r2, maximised);
- fit: ``train.epochs`` passes over the shuffled training rows, a checkpoint after each
  (weights, RNG state, epoch, in JSON), then ``on_epoch`` with validation metrics on
  ``data.validation`` (the validation rows; the test rows when the job has none);
  resuming from the checkpoint ends exactly where a straight run does;
- save/load/predict: ``model.json`` holds everything; ``TabularModel`` gives ``predict``
  (raw rows, ``{feature: number}`` or a list in feature order, through the saved scaler:
  one number each), ``prepare`` (batch inference) and ``input_schema``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from dcsched.kinds.train import TrainSpec
from dcsched.plugins.api import (
    TABULAR_METRICS,
    CheckpointError,
    DataError,
    Dataset,
    DatasetInfo,
    EpochCallback,
    EpochReport,
    ModelPlugin,
    Resources,
    StrictModel,
    TabularModel,
)

FORMAT = 1
CHECKPOINT_FILE = "checkpoint.json"
MODEL_FILE = "model.json"


class RidgeParams(StrictModel):
    """``model.params`` of ridge."""

    alpha: float = Field(0.001, ge=0, le=100, description="L2 penalty on the weights.")


class RidgePlugin(ModelPlugin):
    api_version = 1
    name = "ridge"
    description = "Ridge linear regression by minibatch SGD in NumPy (example plugin)."
    params_model = RidgeParams
    data_sources = ("sklearn", "csv")
    metrics = MappingProxyType({"regression": TABULAR_METRICS["regression"]})
    default_resources = Resources(cpus=1, gpus=0, memory="512MiB")

    def search_space(self) -> dict[str, Any]:
        return {"alpha": {"type": "float", "low": 1e-6, "high": 1.0, "log": True}}

    def create(self, params: BaseModel, info: DatasetInfo, device: str) -> RidgeModel:
        if info.task != "regression":
            raise DataError(
                [
                    f"data: ridge does regression only, and this target is {info.task}; "
                    "use a numeric target, or the mlp or gbdt model type"
                ]
            )
        return RidgeModel(RidgeParams.model_validate(params.model_dump()), info)

    def load(self, directory: Path, device: str) -> RidgeModel:
        path = Path(directory) / MODEL_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; is {directory} a saved ridge model?")
        saved = json.loads(path.read_text())
        if saved.get("format") != FORMAT or saved.get("plugin") != self.name:
            raise ValueError(f"{directory} does not hold a ridge model of format {FORMAT}")
        model = RidgeModel(
            RidgeParams.model_validate(saved["params"]), DatasetInfo.from_json(saved["info"])
        )
        model.weights = np.asarray(saved["weights"], dtype=np.float64)
        model.bias = float(saved["bias"])
        model.preprocessing = saved["preprocessing"]
        return model


class RidgeModel(TabularModel):
    def __init__(self, params: RidgeParams, info: DatasetInfo):
        self.params, self._info = params, info
        self.weights = np.zeros(info.n_features)
        self.bias = 0.0
        self.preprocessing: dict[str, Any] = {}

    @property
    def info(self) -> DatasetInfo:
        return self._info

    def fit(
        self,
        data: Dataset,
        train: TrainSpec,
        seed: int,
        on_epoch: EpochCallback,
        checkpoint_dir: Path | None,
    ) -> None:
        self.preprocessing = dict(data.preprocessing)
        x = np.asarray(data.x_train, dtype=np.float64)
        y = np.asarray(data.y_train, dtype=np.float64)
        stamp = {
            "params": self.params.model_dump(),
            "n": len(x),
            "seed": seed,
            "batch_size": train.batch_size,
            "lr": train.lr,
        }
        rng = np.random.default_rng(seed)
        start = 0
        path = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_FILE
        if path is not None and path.exists():
            state = json.loads(path.read_text())
            if state.get("stamp") != stamp:
                raise CheckpointError(f"{path} was written for other settings; delete it")
            self.weights = np.asarray(state["weights"])
            self.bias = float(state["bias"])
            rng.bit_generator.state = state["rng"]
            start = int(state["epoch"])
        for epoch in range(start + 1, train.epochs + 1):
            began = time.perf_counter()
            order = rng.permutation(len(x))
            total = 0.0
            for first in range(0, len(x), train.batch_size):
                rows = order[first : first + train.batch_size]
                error = x[rows] @ self.weights + self.bias - y[rows]
                total += float(error @ error)
                grad_w = 2 * x[rows].T @ error / len(rows) + 2 * self.params.alpha * self.weights
                self.weights = self.weights - train.lr * grad_w
                self.bias -= train.lr * 2 * float(error.mean())
            seconds = time.perf_counter() - began
            if not np.isfinite(total):
                raise FloatingPointError(f"training diverged at epoch {epoch}; lower train.lr")
            if path is not None:
                state = {
                    "stamp": stamp,
                    "epoch": epoch,
                    "weights": self.weights.tolist(),
                    "bias": self.bias,
                    "rng": rng.bit_generator.state,
                }
                _write(path, json.dumps(state))
            on_epoch(
                EpochReport(
                    epoch=epoch,
                    loss=total / len(x),
                    samples_per_s=len(x) / seconds if seconds > 0 else float("inf"),
                    seconds=seconds,
                    metrics=self.evaluate(*data.validation),
                )
            )

    def predict_arrays(self, x: Any) -> Any:
        return np.asarray(x, dtype=np.float64) @ self.weights + self.bias

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        saved = {
            "format": FORMAT,
            "plugin": RidgePlugin.name,
            "params": self.params.model_dump(),
            "info": self._info.to_json(),
            "weights": self.weights.tolist(),
            "bias": self.bias,
            "preprocessing": self.preprocessing,
        }
        _write(directory / MODEL_FILE, json.dumps(saved))


def _write(path: Path, text: str) -> None:
    """Write atomically: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
