"""The built-in ``cnn`` model type: a small convolutional net for image classification.

Data: ``npz:FILE`` with ``x`` (n, h, w) or (n, c, h, w) and ``y`` labels
(``dcsched.training.arrays``); example: ``examples/digits.npz``, scikit-learn's bundled
8x8 digits (``examples/make_digits.py``). Pixels are standardised with the training
set's mean and standard deviation, which the saved model keeps (``preprocessing.json``),
so ``predict`` takes raw images: one input is a nested list ``h x w`` (or ``c x h x w``)
of numbers; one output is ``{"label", "probabilities"}``.

Network: ``channels`` 3x3 convolutions (padding 1, ReLU), a 2x2 max-pool after the
second (when the image is at least 2x2), a hidden Linear layer of ``hidden`` units with
dropout, and the class logits; CrossEntropy, the train section's optimizer and lr.
Deterministic for a seed on CPU (weights, shuffling and dropout are seeded from it, the
caller's RNG untouched). A checkpoint after every epoch holds weights, optimizer, RNG
states and epoch; a resumed run ends where a straight one does. One worker.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from pydantic import BaseModel, Field

from dcsched.kinds.train import DataSpec, TrainSpec
from dcsched.plugins import torch_checkpoint
from dcsched.plugins.api import (
    Dataset,
    DatasetInfo,
    EpochCallback,
    EpochReport,
    FloatArray,
    MetricSet,
    ModelPlugin,
    Resources,
    StrictModel,
    TrainedModel,
)
from dcsched.plugins.saved import META_FILE, read_meta
from dcsched.plugins.tabular import PREPROCESSING_FILE, format_outputs
from dcsched.rundir import write_text_atomically

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CHECKPOINT_FILE = "checkpoint.pt"
_METRICS = ("accuracy", "precision", "recall", "f1", "log_loss")


class CNNParams(StrictModel):
    """``model.params`` of the cnn plugin."""

    channels: list[Annotated[int, Field(strict=True, ge=1, le=1024)]] = Field(
        default=[16, 32], min_length=1, max_length=6, description="Filters of each conv layer."
    )
    hidden: int = Field(64, ge=1, le=65536, description="Units of the dense layer.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout before the output layer.")


class CNNPlugin(ModelPlugin):
    api_version = 1
    name = "cnn"
    description = "Small convolutional net (PyTorch) for image classification (npz arrays)."
    params_model = CNNParams
    data_sources = ("npz",)
    metrics = MappingProxyType(
        {
            "binary": MetricSet(_METRICS, "accuracy", "maximize"),
            "multiclass": MetricSet(_METRICS, "accuracy", "maximize"),
        }
    )
    gpu = True
    uses_torch = True
    default_resources = Resources(cpus=1, gpus=0, memory="1GiB")

    def search_space(self) -> dict[str, Any]:
        return {
            "channels": {"type": "categorical", "choices": [[8, 16], [16, 32], [32, 64]]},
            "hidden": {"type": "int", "low": 32, "high": 256, "log": True},
            "dropout": {"type": "float", "low": 0.0, "high": 0.5},
        }

    def check_data(self, data: DataSpec) -> None:
        from dcsched.core.spec import SpecError
        from dcsched.training.arrays import check_npz

        if data.scheme not in self.data_sources:
            raise SpecError(
                [f"data.source: model type 'cnn' does not take {data.scheme} data; it takes: npz"]
            )
        check_npz(data)

    def load_data(self, data: DataSpec) -> Dataset:
        from dcsched.training.arrays import load_npz

        return load_npz(data)

    def create(self, params: BaseModel, info: DatasetInfo, device: str) -> CNNModel:
        return CNNModel(CNNParams.model_validate(params.model_dump()), info, device)

    def load(self, directory: Path, device: str) -> CNNModel:
        directory = Path(directory)
        meta = read_meta(
            directory,
            self.name,
            FORMAT_VERSION,
            [torch_checkpoint.WEIGHTS_FILE, PREPROCESSING_FILE],
        )
        model = CNNModel(
            CNNParams.model_validate(meta["params"]), DatasetInfo.from_json(meta["info"]), device
        )
        model._preprocessing = json.loads((directory / PREPROCESSING_FILE).read_text())
        torch_checkpoint.load_weights(model._net, directory, device)
        return model


class CNNModel(TrainedModel):
    def __init__(self, params: CNNParams, info: DatasetInfo, device: str):
        if len(info.input_shape) != 3:
            raise ValueError(f"cnn needs images (c, h, w); the data has {info.input_shape}")
        self._params, self._info, self._device = params, info, device
        self._net = _build(params, info, device)
        self._preprocessing: dict[str, Any] = {"mean": 0.0, "std": 1.0}

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
        import torch
        from torch import nn

        from dcsched.plugins.mlp import _optimizer

        self._preprocessing = dict(data.preprocessing)
        n = len(data.x_train)
        if n == 0:
            raise ValueError("cannot fit on an empty training set")
        device = torch.device(self._device)
        with torch.random.fork_rng(devices=[]):
            generator = torch.Generator(device="cpu")
            optimizer = _optimizer(train, self._net.parameters())
            stamp = torch_checkpoint.stamp(FORMAT_VERSION, self._params, self._info, n, seed, train)
            path = None if checkpoint_dir is None else checkpoint_dir / CHECKPOINT_FILE
            start = 0
            if path is not None and path.exists():
                start = self._restore(path, stamp, optimizer, generator)
            else:
                torch.manual_seed(seed)
                generator.manual_seed(seed)
                for module in self._net.modules():
                    reset = getattr(module, "reset_parameters", None)
                    if callable(reset):
                        reset()
            x = torch.as_tensor(np.ascontiguousarray(data.x_train, dtype=np.float32), device=device)
            y = torch.as_tensor(np.asarray(data.y_train, dtype=np.int64), device=device)
            loss_fn = nn.CrossEntropyLoss()
            for epoch in range(start + 1, train.epochs + 1):
                began = time.perf_counter()
                self._net.train()
                order = torch.randperm(n, generator=generator).to(device)
                total = 0.0
                for first in range(0, n, train.batch_size):
                    batch = order[first : first + train.batch_size]
                    optimizer.zero_grad(set_to_none=True)
                    loss = loss_fn(self._net(x[batch]), y[batch])
                    loss.backward()
                    optimizer.step()
                    total += float(loss.detach()) * len(batch)
                seconds = time.perf_counter() - began
                mean_loss = total / n
                if not math.isfinite(mean_loss):
                    raise FloatingPointError(
                        f"training diverged at epoch {epoch} (loss {mean_loss}); "
                        "try a smaller train.lr"
                    )
                if path is not None:
                    self._write_checkpoint(path, stamp, epoch, optimizer, generator)
                on_epoch(
                    EpochReport(
                        epoch=epoch,
                        loss=mean_loss,
                        samples_per_s=n / seconds if seconds > 0 else float("inf"),
                        seconds=seconds,
                        metrics=self.evaluate(*data.validation) if len(data.validation[0]) else {},
                    )
                )
        self._net.eval()

    def predict_arrays(self, x: Any) -> FloatArray:
        import torch

        x = np.asarray(x, dtype=np.float32)
        shape = self._info.input_shape
        if x.ndim == 3 and shape[0] == 1:
            x = x[:, None]
        if x.shape[1:] != shape:
            raise ValueError(
                f"expected images of shape (n, {', '.join(map(str, shape))}), got {x.shape}"
            )
        self._net.eval()
        with torch.no_grad():
            logits = self._net(torch.as_tensor(x, device=self._device)).cpu().double()
        probabilities: FloatArray = torch.softmax(logits, dim=1).numpy()
        return probabilities

    def predict(self, inputs: Sequence[Any]) -> list[Any]:
        shape = self._info.input_shape
        try:
            raw = np.asarray(inputs, dtype=np.float64)
        except (ValueError, TypeError):
            raise ValueError(
                "inputs must be images: nested lists of numbers, all one size"
            ) from None
        if raw.ndim == 3 and shape[0] == 1:
            raw = raw[:, None]
        if raw.shape[1:] != shape or not np.all(np.isfinite(raw)):
            raise ValueError(f"each input must be a finite image of shape {list(shape)} (or h x w)")
        mean, std = float(self._preprocessing["mean"]), float(self._preprocessing["std"])
        return format_outputs(self._info, self.predict_arrays((raw - mean) / std))

    def input_schema(self) -> dict[str, Any]:
        c, h, w = self._info.input_shape
        row = {"type": "array", "items": {"type": "number"}, "minItems": w, "maxItems": w}
        image = {"type": "array", "items": row, "minItems": h, "maxItems": h}
        if c == 1:
            return image
        return {"type": "array", "items": image, "minItems": c, "maxItems": c}

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch_checkpoint.save_weights(self._net, directory)
        meta = {
            "format": FORMAT_VERSION,
            "plugin": CNNPlugin.name,
            "params": self._params.model_dump(mode="json"),
            "info": self._info.to_json(),
        }
        write_text_atomically(
            directory / PREPROCESSING_FILE, json.dumps(self._preprocessing) + "\n"
        )
        write_text_atomically(directory / META_FILE, json.dumps(meta, indent=2) + "\n")

    def _write_checkpoint(
        self, path: Path, stamp: dict[str, Any], epoch: int, optimizer: Any, generator: Any
    ) -> None:
        torch_checkpoint.save(path, stamp, epoch, self._net, optimizer, generator)

    def _restore(self, path: Path, stamp: dict[str, Any], optimizer: Any, generator: Any) -> int:
        state = torch_checkpoint.restore(path, stamp, self._device, self._net, optimizer, generator)
        return int(state["epoch"])


def _build(params: CNNParams, info: DatasetInfo, device: str) -> torch.nn.Sequential:
    import torch
    from torch import nn

    c, h, w = info.input_shape
    layers: list[nn.Module] = []
    width = c
    for i, filters in enumerate(params.channels):
        layers += [nn.Conv2d(width, filters, 3, padding=1), nn.ReLU()]
        width = filters
        if i == 1 and h >= 2 and w >= 2:
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
    layers += [nn.Flatten(), nn.Linear(width * h * w, params.hidden), nn.ReLU()]
    if params.dropout > 0:
        layers.append(nn.Dropout(params.dropout))
    layers.append(nn.Linear(params.hidden, info.n_classes))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(*layers).to(device)
