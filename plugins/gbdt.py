"""The built-in ``gbdt`` model type: gradient-boosted decision trees, without torch.

Why scikit-learn's ``HistGradientBoostingClassifier``/``Regressor`` and not LightGBM:
scikit-learn is already a dependency of dcsched (data loading, splitting), its histogram
GBDT is LightGBM's algorithm, fast on tabular data of this size, and deterministic for a
seed; LightGBM would add a compiled wheel (and OpenMP) to every Ray node for no gain here.
A ``gbdt`` job never imports torch (``uses_torch = False``; tested in a subprocess).

Words: an *epoch* is one round of ``trees_per_epoch`` boosting iterations, added with
``warm_start``; ``train.epochs`` rounds in all. ``train.lr``, ``train.optimizer`` and
``train.batch_size`` do not apply (the learning rate is ``model.params.learning_rate``).
Early stopping is off, so the same seed and data give the same trees.

Checkpoint after every epoch: the estimator pickled (``checkpoint.pkl``, written
atomically) with a stamp of the params, data and seed; a resumed run adds the remaining
rounds and ends where a straight run does. Saved layout: ``model.pkl`` (the estimator),
``model.json`` (format, plugin, params, dataset info) and ``preprocessing.json`` (the
scaler fitted on the training rows; trees do not need it, but ``predict`` takes raw
inputs like every tabular model). Pickles are only read from directories dcsched wrote
(the job's checkpoint folder, the model registry): never load a model from elsewhere.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from dcsched.kinds.train import TrainSpec
from dcsched.plugins.api import (
    CheckpointError,
    Dataset,
    DatasetInfo,
    EpochCallback,
    EpochReport,
    FloatArray,
    ModelPlugin,
    Resources,
    StrictModel,
    TabularModel,
)
from dcsched.plugins.saved import META_FILE, read_meta
from dcsched.plugins.tabular import PREPROCESSING_FILE

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CHECKPOINT_FILE = "checkpoint.pkl"
MODEL_FILE = "model.pkl"


class GBDTParams(StrictModel):
    """``model.params`` of the gbdt plugin."""

    learning_rate: float = Field(0.1, gt=0, le=1, description="Shrinkage of each tree.")
    trees_per_epoch: int = Field(
        20, ge=1, le=10_000, description="Boosting iterations added by each epoch."
    )
    max_leaf_nodes: int = Field(31, ge=2, le=4096, description="Leaves of each tree at most.")
    max_depth: int | None = Field(None, ge=1, le=64, description="Depth limit; none if null.")
    min_samples_leaf: int = Field(20, ge=1, description="Rows in each leaf at least.")
    l2_regularization: float = Field(0.0, ge=0, description="L2 penalty on leaf values.")


class GBDTPlugin(ModelPlugin):
    api_version = 1
    name = "gbdt"
    description = "Gradient-boosted trees (scikit-learn HistGradientBoosting), no torch."
    params_model = GBDTParams
    default_resources = Resources(cpus=1, gpus=0, memory="1GiB")

    def search_space(self) -> dict[str, Any]:
        return {
            "learning_rate": {"type": "float", "low": 0.01, "high": 0.3, "log": True},
            "max_leaf_nodes": {"type": "int", "low": 8, "high": 128, "log": True},
            "min_samples_leaf": {"type": "int", "low": 5, "high": 50},
            "l2_regularization": {"type": "float", "low": 0.0, "high": 1.0},
        }

    def create(self, params: BaseModel, info: DatasetInfo, device: str) -> GBDTModel:
        return GBDTModel(GBDTParams.model_validate(params.model_dump()), info)

    def load(self, directory: Path, device: str) -> GBDTModel:
        directory = Path(directory)
        meta = read_meta(directory, self.name, FORMAT_VERSION, [MODEL_FILE])
        model = GBDTModel(
            GBDTParams.model_validate(meta["params"]), DatasetInfo.from_json(meta["info"])
        )
        with open(directory / MODEL_FILE, "rb") as handle:
            model._estimator = pickle.load(handle)  # written by dcsched (module doc)
        preprocessing_path = directory / PREPROCESSING_FILE
        if preprocessing_path.is_file():
            model.preprocessing = json.loads(preprocessing_path.read_text())
        return model


class GBDTModel(TabularModel):
    """A HistGradientBoosting estimator for one dataset."""

    def __init__(self, params: GBDTParams, info: DatasetInfo):
        self._params = params
        self._info = info
        self._estimator: Any = None
        self.preprocessing: dict[str, Any] = {}

    @property
    def info(self) -> DatasetInfo:
        return self._info

    @property
    def params(self) -> GBDTParams:
        return self._params

    def _new_estimator(self, seed: int) -> Any:
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        cls = (
            HistGradientBoostingRegressor
            if self._info.task == "regression"
            else HistGradientBoostingClassifier
        )
        p = self._params
        return cls(
            learning_rate=p.learning_rate,
            max_iter=p.trees_per_epoch,
            max_leaf_nodes=p.max_leaf_nodes,
            max_depth=p.max_depth,
            min_samples_leaf=p.min_samples_leaf,
            l2_regularization=p.l2_regularization,
            early_stopping=False,
            warm_start=True,
            random_state=seed,
        )

    def fit(
        self,
        data: Dataset,
        train: TrainSpec,
        seed: int,
        on_epoch: EpochCallback,
        checkpoint_dir: Path | None,
    ) -> None:
        x, y = np.asarray(data.x_train), np.asarray(data.y_train)
        if len(x) == 0 or len(x) != len(y):
            raise ValueError(f"cannot fit on {len(x)} feature rows and {len(y)} targets")
        self.preprocessing = dict(data.preprocessing)
        stamp = {
            "format": FORMAT_VERSION,
            "params": self._params.model_dump(mode="json"),
            "info": self._info.to_json(),
            "n_train": len(x),
            "seed": seed,
        }
        path = None if checkpoint_dir is None else checkpoint_dir / CHECKPOINT_FILE
        start = 0
        if path is not None and path.exists():
            start = self._restore(path, stamp)
            logger.info("resuming from %s after epoch %s", path, start)
        else:
            self._estimator = self._new_estimator(seed)
        for epoch in range(start + 1, train.epochs + 1):
            began = time.perf_counter()
            self._estimator.set_params(max_iter=epoch * self._params.trees_per_epoch)
            self._estimator.fit(x, y)
            seconds = time.perf_counter() - began
            loss = _training_loss(self._estimator, x, y, self._info)
            if path is not None:
                self._write_checkpoint(path, stamp, epoch)
            on_epoch(
                EpochReport(
                    epoch=epoch,
                    loss=loss,
                    samples_per_s=len(x) / seconds if seconds > 0 else float("inf"),
                    seconds=seconds,
                    metrics=self.evaluate(*data.validation) if len(data.validation[0]) else {},
                )
            )

    def predict_arrays(self, x: Any) -> FloatArray:
        if self._estimator is None:
            raise RuntimeError("the model is not trained")
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self._info.n_features:
            raise ValueError(
                f"expected features of shape (n, {self._info.n_features}), got {x.shape}"
            )
        if self._info.task == "regression":
            values: FloatArray = np.asarray(self._estimator.predict(x), dtype=np.float64)
            return values
        probabilities: FloatArray = np.asarray(self._estimator.predict_proba(x), dtype=np.float64)
        return probabilities

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        _atomic_write_bytes(directory / MODEL_FILE, pickle.dumps(self._estimator))
        meta = {
            "format": FORMAT_VERSION,
            "plugin": GBDTPlugin.name,
            "params": self._params.model_dump(mode="json"),
            "info": self._info.to_json(),
        }
        _atomic_write_bytes(
            directory / PREPROCESSING_FILE,
            (json.dumps(self.preprocessing, indent=2) + "\n").encode(),
        )
        _atomic_write_bytes(directory / META_FILE, (json.dumps(meta, indent=2) + "\n").encode())

    def _write_checkpoint(self, path: Path, stamp: dict[str, Any], epoch: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {"stamp": stamp, "epoch": epoch, "estimator": self._estimator}
        _atomic_write_bytes(path, pickle.dumps(state))

    def _restore(self, path: Path, stamp: dict[str, Any]) -> int:
        try:
            with open(path, "rb") as handle:
                state = pickle.load(handle)  # the job's own checkpoint folder
        except Exception as exc:
            raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
        if not isinstance(state, dict) or state.get("stamp") != stamp:
            raise CheckpointError(
                f"checkpoint {path} was written for other data or parameters; delete it to "
                "start over"
            )
        self._estimator = state["estimator"]
        return int(state["epoch"])


def _training_loss(estimator: Any, x: Any, y: Any, info: DatasetInfo) -> float:
    """Log loss (classifiers) or MSE (regression) on the training rows."""
    if info.task == "regression":
        return float(np.mean((estimator.predict(x) - y) ** 2))
    p = np.clip(
        estimator.predict_proba(x)[np.arange(len(y)), np.asarray(y, dtype=np.int64)], 1e-15, 1
    )
    return float(-np.mean(np.log(p)))


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
