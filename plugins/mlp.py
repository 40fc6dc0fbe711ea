"""The built-in ``mlp`` model type: a multi-layer perceptron trained with plain PyTorch.

Network: ``hidden`` Linear layers, each followed by the activation (and dropout when
``dropout > 0``), then an output layer of 1 unit (binary: a logit, trained with
BCEWithLogits), k units (multiclass: logits, CrossEntropy) or 1 unit (regression: MSE on
the standardised target; predictions and reported losses are in the target's own units).

Determinism: ``fit`` seeds the weight initialisation, the shuffling (a ``torch.Generator``)
and dropout from ``seed``, without touching the caller's global RNG; on CPU the same seed
and data give a bit-identical model (on CUDA, non-deterministic kernels may differ in the
last bits). A checkpoint after every epoch holds the weights, optimizer state, epoch and
the RNG states, so a resumed run ends exactly where an uninterrupted one would.

torch is imported inside functions only: listing plugins must not import it.

Saved layout (``save``/``load``): ``weights.pt`` (a ``torch.save``d state_dict on CPU) and
``model.json`` (format, plugin, params, dataset info, target scaling) and
``preprocessing.json`` (the feature scaler fitted on the training rows; ``predict``
applies it to raw inputs).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from dcsched.kinds.train import TrainSpec
from dcsched.plugins import torch_checkpoint
from dcsched.plugins.api import (
    Dataset,
    DatasetInfo,
    EpochCallback,
    EpochReport,
    FloatArray,
    ModelPlugin,
    Resources,
    StrictModel,
    TabularModel,
    TargetArray,
)
from dcsched.plugins.saved import META_FILE, read_meta
from dcsched.plugins.tabular import PREPROCESSING_FILE
from dcsched.rundir import write_text_atomically
from dcsched.training import distributed

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CHECKPOINT_FILE = "checkpoint.pt"
_PREDICT_CHUNK = 65536


class MLPParams(StrictModel):
    """``model.params`` of the mlp plugin."""

    hidden: list[Annotated[int, Field(strict=True, ge=1, le=65536)]] = Field(
        default=[64, 32],  # pydantic copies mutable defaults; this one shows in the schema
        min_length=1,
        max_length=16,
        description="Units of each hidden layer, input side first (1 to 16 layers).",
    )
    activation: Literal["relu", "tanh"] = Field("relu", description="Hidden-layer activation.")
    dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="Dropout after each hidden layer; 0 disables it."
    )


class MLPPlugin(ModelPlugin):
    api_version = 1
    name = "mlp"
    description = "Multi-layer perceptron (PyTorch) for classification and regression."
    params_model = MLPParams
    multi_worker = True
    gpu = True
    uses_torch = True
    default_resources = Resources(cpus=1, gpus=0, memory="1GiB")

    def search_space(self) -> dict[str, Any]:
        return {
            "hidden": {"type": "categorical", "choices": [[32], [64, 32], [128, 64]]},
            "activation": {"type": "categorical", "choices": ["relu", "tanh"]},
            "dropout": {"type": "float", "low": 0.0, "high": 0.5},
        }

    def create(self, params: BaseModel, info: DatasetInfo, device: str) -> MLPModel:
        return MLPModel(MLPParams.model_validate(params.model_dump()), info, device)

    def load(self, directory: Path, device: str) -> MLPModel:
        directory = Path(directory)
        meta = read_meta(directory, self.name, FORMAT_VERSION, [torch_checkpoint.WEIGHTS_FILE])
        model = MLPModel(
            MLPParams.model_validate(meta["params"]),
            DatasetInfo.from_json(meta["info"]),
            device,
        )
        preprocessing_path = directory / PREPROCESSING_FILE
        if preprocessing_path.is_file():
            model.preprocessing = json.loads(preprocessing_path.read_text())
        scaling = meta.get("target_scaling")
        if scaling is not None:
            model._y_mean, model._y_std = float(scaling["mean"]), float(scaling["std"])
        torch_checkpoint.load_weights(model._net, directory, device)
        return model


class MLPModel(TabularModel):
    """An MLP for one dataset on one device."""

    def __init__(self, params: MLPParams, info: DatasetInfo, device: str):
        self._params = params
        self._info = info
        self._device = device
        self._net = _build_network(params, info, device)
        # Regression targets are standardised for training; these undo it.
        self._y_mean = 0.0
        self._y_std = 1.0
        self.preprocessing: dict[str, Any] = {}

    @property
    def info(self) -> DatasetInfo:
        return self._info

    @property
    def params(self) -> MLPParams:
        return self._params

    def fit(
        self,
        data: Dataset,
        train: TrainSpec,
        seed: int,
        on_epoch: EpochCallback,
        checkpoint_dir: Path | None,
    ) -> None:
        import torch

        x_train, y_train = data.x_train, data.y_train
        self.preprocessing = dict(data.preprocessing)

        self._check_x(x_train)
        if len(y_train) != len(x_train):
            raise ValueError(f"{len(x_train)} feature rows but {len(y_train)} targets")
        n = len(x_train)
        if n == 0:
            raise ValueError("cannot fit on an empty training set")
        device = torch.device(self._device)
        on_cuda = device.type == "cuda"
        rng_devices = [device.index or torch.cuda.current_device()] if on_cuda else []

        with torch.random.fork_rng(devices=rng_devices):
            generator = torch.Generator(device="cpu")
            optimizer = _optimizer(train, self._net.parameters())
            stamp = torch_checkpoint.stamp(FORMAT_VERSION, self._params, self._info, n, seed, train)
            checkpoint_path = None if checkpoint_dir is None else checkpoint_dir / CHECKPOINT_FILE
            start = 0
            if checkpoint_path is not None and checkpoint_path.exists():
                start = self._restore(checkpoint_path, stamp, optimizer, generator, on_cuda)
                logger.info("resuming from %s after epoch %s", checkpoint_path, start)
                if start > train.epochs:
                    logger.warning(
                        "checkpoint is at epoch %s, past the %s asked for", start, train.epochs
                    )
            else:
                self._fresh_start(y_train, seed, generator)

            x = torch.as_tensor(np.ascontiguousarray(x_train, dtype=np.float32), device=device)
            y = self._target_tensor(y_train, device)
            loss_fn = _loss_function(self._info)
            net = distributed.wrap(self._net)  # DDP on a gang of workers, else the net
            scale = self._y_std**2 if self._info.task == "regression" else 1.0

            for epoch in range(start + 1, train.epochs + 1):
                began = time.perf_counter()
                self._net.train()
                order = torch.randperm(n, generator=generator).to(device)
                total = torch.zeros((), device=device)
                for first in range(0, n, train.batch_size):
                    batch = distributed.shard(order[first : first + train.batch_size])
                    optimizer.zero_grad(set_to_none=True)
                    loss = loss_fn(self._forward(x[batch], net), y[batch])
                    loss.backward()  # type: ignore[no-untyped-call]  # torch stub is untyped
                    optimizer.step()
                    total += loss.detach() * len(batch)
                mean_loss = float(distributed.sum_all(total).item()) / n * scale
                seconds = time.perf_counter() - began
                if not math.isfinite(mean_loss):
                    raise FloatingPointError(
                        f"training diverged at epoch {epoch} (loss {mean_loss}); "
                        "try a smaller train.lr"
                    )
                if checkpoint_path is not None and distributed.is_main():
                    self._write_checkpoint(
                        checkpoint_path, stamp, epoch, optimizer, generator, on_cuda
                    )
                validation = (
                    self.evaluate(*data.validation)
                    if distributed.is_main() and len(data.validation[0])
                    else {}
                )
                on_epoch(
                    EpochReport(
                        epoch=epoch,
                        loss=mean_loss,
                        samples_per_s=n / seconds if seconds > 0 else float("inf"),
                        seconds=seconds,
                        metrics=validation,
                    )
                )
        self._net.eval()

    def predict_arrays(self, x: FloatArray) -> FloatArray:
        import torch

        self._check_x(x)
        if self._net.training:  # eval() walks every module: not on each batch
            self._net.eval()
        outputs = []
        with torch.no_grad():
            for first in range(0, len(x), _PREDICT_CHUNK):
                chunk = np.ascontiguousarray(x[first : first + _PREDICT_CHUNK], dtype=np.float32)
                outputs.append(self._net(torch.as_tensor(chunk, device=self._device)).cpu())
        out = (
            (outputs[0] if len(outputs) == 1 else torch.cat(outputs)).double()
            if outputs
            else torch.zeros((0, self._n_outputs()), dtype=torch.float64)
        )
        if self._info.task == "binary":
            positive = torch.sigmoid(out[:, 0]).numpy()
            return np.column_stack([1.0 - positive, positive])
        if self._info.task == "multiclass":
            probabilities: FloatArray = torch.softmax(out, dim=1).numpy()
            return probabilities
        values: FloatArray = out[:, 0].numpy() * self._y_std + self._y_mean
        return values

    def numpy_predictor(self) -> Callable[[FloatArray], FloatArray]:
        """``predict_arrays`` of *raw* feature rows (float64 ``(n, n_features)``, already
        checked to be finite numbers), computed with numpy alone: the fitted scaler, then
        the network's layers in float32, then the task's output as in ``predict_arrays``.
        The serving replicas use it (``dcsched.serving``): for one row it takes ~10 us
        where torch's per-call overhead costs ~150 us. Inference only; no dropout."""
        scaler = self.scaler()
        mean = np.asarray(scaler.mean, dtype=np.float64)
        scale = np.asarray(scaler.scale, dtype=np.float64)
        layers: list[tuple[str, Any, Any]] = []
        module: Any
        for module in self._net:
            kind = type(module).__name__
            if kind == "Linear":
                weight = module.weight.detach().cpu().numpy().astype(np.float32).T.copy()
                bias = module.bias.detach().cpu().numpy().astype(np.float32).copy()
                layers.append(("linear", weight, bias))
            elif kind in ("ReLU", "Tanh"):
                layers.append((kind.lower(), None, None))
            # Dropout is the identity at inference.
        task, y_mean, y_std = self._info.task, self._y_mean, self._y_std

        def forward(rows: FloatArray) -> FloatArray:
            h = ((rows - mean) / scale).astype(np.float32)
            for kind, weight, bias in layers:
                if kind == "linear":
                    h = h @ weight + bias
                elif kind == "relu":
                    np.maximum(h, 0.0, out=h)
                else:
                    np.tanh(h, out=h)
            out = h.astype(np.float64)
            if task == "binary":
                positive = 1.0 / (1.0 + np.exp(-out[:, 0]))
                return np.column_stack([1.0 - positive, positive])
            if task == "multiclass":
                shifted = np.exp(out - out.max(axis=1, keepdims=True))
                probabilities: FloatArray = shifted / shifted.sum(axis=1, keepdims=True)
                return probabilities
            values: FloatArray = out[:, 0] * y_std + y_mean
            return values

        return forward

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch_checkpoint.save_weights(self._net, directory)
        meta = {
            "format": FORMAT_VERSION,
            "plugin": MLPPlugin.name,
            "params": self._params.model_dump(mode="json"),
            "info": self._info.to_json(),
            "target_scaling": (
                {"mean": self._y_mean, "std": self._y_std}
                if self._info.task == "regression"
                else None
            ),
        }
        write_text_atomically(
            directory / PREPROCESSING_FILE, json.dumps(self.preprocessing, indent=2) + "\n"
        )
        write_text_atomically(directory / META_FILE, json.dumps(meta, indent=2) + "\n")

    # -- internals ---------------------------------------------------------------------

    def _n_outputs(self) -> int:
        return self._info.n_classes if self._info.task == "multiclass" else 1

    def _check_x(self, x: FloatArray) -> None:
        if x.ndim != 2 or x.shape[1] != self._info.n_features:
            raise ValueError(
                f"expected features of shape (n, {self._info.n_features}), got {x.shape}"
            )

    def _forward(self, x: torch.Tensor, net: Any = None) -> torch.Tensor:
        out: torch.Tensor = (net or self._net)(x)
        return out if self._info.task == "multiclass" else out[:, 0]

    def _target_tensor(self, y_train: TargetArray, device: torch.device) -> torch.Tensor:
        import torch

        if self._info.task == "multiclass":
            return torch.as_tensor(np.asarray(y_train, dtype=np.int64), device=device)
        values = np.asarray(y_train, dtype=np.float64)
        if self._info.task == "regression":
            values = (values - self._y_mean) / self._y_std
        return torch.as_tensor(values.astype(np.float32), device=device)

    def _fresh_start(self, y_train: TargetArray, seed: int, generator: torch.Generator) -> None:
        """Seed every RNG from ``seed`` and re-initialise the weights."""
        import torch

        torch.manual_seed(seed)  # inside fork_rng: the caller's RNG state is restored
        generator.manual_seed(seed)
        for module in self._net.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
        if self._info.task == "regression":
            values = np.asarray(y_train, dtype=np.float64)
            self._y_mean = float(values.mean())
            std = float(values.std())
            self._y_std = std if std > 0 else 1.0

    def _write_checkpoint(
        self,
        path: Path,
        stamp: dict[str, Any],
        epoch: int,
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
        on_cuda: bool,
    ) -> None:
        import torch

        extra = {
            "cuda_rng": torch.cuda.get_rng_state() if on_cuda else None,
            "y_mean": self._y_mean,
            "y_std": self._y_std,
        }
        torch_checkpoint.save(path, stamp, epoch, self._net, optimizer, generator, extra)

    def _restore(
        self,
        path: Path,
        stamp: dict[str, Any],
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
        on_cuda: bool,
    ) -> int:
        import torch

        state = torch_checkpoint.restore(path, stamp, self._device, self._net, optimizer, generator)
        if on_cuda and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"].cpu())
        self._y_mean, self._y_std = float(state["y_mean"]), float(state["y_std"])
        return int(state["epoch"])


def _build_network(params: MLPParams, info: DatasetInfo, device: str) -> torch.nn.Sequential:
    """The network, initialised from seed 0 without touching the caller's RNG (fit re-seeds)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return _layers(params, info).to(device)


def _layers(params: MLPParams, info: DatasetInfo) -> torch.nn.Sequential:
    from torch import nn

    layers: list[nn.Module] = []
    width = info.n_features
    for units in params.hidden:
        layers.append(nn.Linear(width, units))
        layers.append(nn.ReLU() if params.activation == "relu" else nn.Tanh())
        if params.dropout > 0:
            layers.append(nn.Dropout(params.dropout))
        width = units
    layers.append(nn.Linear(width, info.n_classes if info.task == "multiclass" else 1))
    return nn.Sequential(*layers)


def _optimizer(train: TrainSpec, parameters: Any) -> torch.optim.Optimizer:
    import torch

    if train.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=train.lr)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=train.lr)
    return torch.optim.SGD(parameters, lr=train.lr)


def _loss_function(info: DatasetInfo) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    from torch import nn

    if info.task == "binary":
        return nn.BCEWithLogitsLoss()
    if info.task == "multiclass":
        return nn.CrossEntropyLoss()
    return nn.MSELoss()
