"""A registered model version loaded for serving: the plugin's ``load`` + ``predict``.

The saved model holds its preprocessing, so raw feature vectors go in and the plugin's
JSON answers come out. When the loaded model offers ``numpy_predictor()`` (the built-in
``mlp`` does), rows are scored with it: the same numbers as ``predict`` (the conformance
test compares them) without torch's per-call overhead, which dominates at one row a
request. Any other plugin is called through ``predict``.

A replica that asked for GPUs runs inside its job's placement group, where Ray sets
CUDA_VISIBLE_DEVICES to the GPUs reserved for it; it loads the model on ``cuda`` when
torch sees a GPU there (``choose_device``) and then scores with the plugin's
``predict`` on that device, not with the numpy path.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dcsched.serving.protocol import BadRequest, FeatureShape

logger = logging.getLogger(__name__)


def choose_device(gpus: float, cuda_available: Callable[[], bool]) -> str:
    """``cuda`` for a replica that asked for GPUs when CUDA is usable in its process (Ray
    has set CUDA_VISIBLE_DEVICES to its GPUs), else ``cpu``. A replica without GPUs
    stays on CPU even where the node has some: they are not its to use."""
    return "cuda" if gpus > 0 and cuda_available() else "cpu"


class ServedModel:
    def __init__(self, name: str, version: int, plugin_name: str, model: Any, device: str = "cpu"):
        from dcsched.plugins.tabular import format_outputs

        self.name, self.version, self.plugin = name, version, plugin_name
        self.model = model
        self.device = device
        self.cuda_available = False
        """Whether torch saw CUDA in this process (asked only of replicas with GPUs)."""
        self.info = model.info
        self.shape = FeatureShape(self.info.feature_names)
        self._format = format_outputs
        fast = getattr(model, "numpy_predictor", None) if device == "cpu" else None
        self._arrays: Callable[[Any], Any] | None = fast() if callable(fast) else None

    @property
    def fast(self) -> bool:
        return self._arrays is not None

    def predict(self, rows: list[list[Any]]) -> list[Any]:
        """One JSON answer per checked row; BadRequest(422) if the plugin refuses a row."""
        if self._arrays is not None:
            try:
                matrix = np.array(rows, dtype=np.float64)
            except (OverflowError, ValueError) as exc:
                raise BadRequest(422, f"features must be finite numbers ({exc})") from None
            result: list[Any] = self._format(self.info, self._arrays(matrix))
            return result
        try:
            answers: list[Any] = self.model.predict(rows)
        except ValueError as exc:
            raise BadRequest(422, str(exc)) from None
        return answers

    def metadata(self) -> dict[str, Any]:
        """OIP v2 model metadata."""
        outputs: list[dict[str, Any]]
        if self.info.task == "regression":
            outputs = [{"name": "prediction", "datatype": "FP64", "shape": [-1]}]
        else:
            numeric = all(isinstance(c, int) for c in self.info.classes)
            outputs = [
                {"name": "label", "datatype": "INT64" if numeric else "BYTES", "shape": [-1]},
                {
                    "name": "probabilities",
                    "datatype": "FP64",
                    "shape": [-1, self.info.n_classes],
                },
            ]
        return {
            "name": self.name,
            "versions": [str(self.version)],
            "platform": f"dcsched-{self.plugin}",
            "inputs": [{"name": "input-0", "datatype": "FP32", "shape": [-1, self.shape.n]}],
            "outputs": outputs,
            "parameters": {"feature_names": list(self.shape.names), "task": self.info.task},
        }


def load_model(
    name: str, version: int, plugin_name: str, directory: Path, gpus: float = 0.0
) -> ServedModel:
    """Load a saved model with its plugin, on the device ``choose_device`` picks."""
    from dcsched.plugins.registry import load_plugin

    device, cuda = "cpu", False
    if gpus > 0:
        import torch

        cuda = torch.cuda.is_available()
        device = choose_device(gpus, lambda: cuda)
    plugin = load_plugin(plugin_name)
    model = plugin.load(Path(directory), device)
    served = ServedModel(name, version, plugin_name, model, device)
    served.cuda_available = cuda
    logger.info(
        "loaded model %s:%s (%s, %s path, on %s; CUDA_VISIBLE_DEVICES=%s)",
        name,
        version,
        plugin_name,
        "numpy" if served.fast else "plugin",
        device,
        os.environ.get("CUDA_VISIBLE_DEVICES"),
    )
    return served
