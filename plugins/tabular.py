"""Tabular inputs and outputs shared by the tabular model types (``mlp``, ``gbdt``).

``Preprocessing`` is the scaler fitted on the training rows (``Dataset.preprocessing``):
a model saves it and applies it in ``predict``, so raw inputs give the answers of
evaluation. One input of ``predict`` is an object ``{feature name: number}`` (every
feature) or a list of numbers in feature order. One output is ``{"label", "probabilities"}``
for classifiers (labels as in the data) and a number for regression.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

from dcsched.plugins.api import DatasetInfo

PREPROCESSING_FILE = "preprocessing.json"


@dataclass(frozen=True)
class Preprocessing:
    feature_names: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any], info: DatasetInfo) -> Preprocessing:
        if not data:  # an identity scaler (a model fitted on already-prepared arrays)
            n = info.n_features
            return cls(info.feature_names, (0.0,) * n, (1.0,) * n)
        return cls(
            tuple(str(name) for name in data["feature_names"]),
            tuple(float(v) for v in data["mean"]),
            tuple(float(v) for v in data["scale"]),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "feature_names": list(self.feature_names),
            "mean": list(self.mean),
            "scale": list(self.scale),
        }

    def transform(self, inputs: Sequence[Any]) -> npt.NDArray[np.float32]:
        """Raw JSON inputs to standardised float32 features; ValueError naming the input."""
        n = len(self.feature_names)
        rows = np.zeros((len(inputs), n), dtype=np.float64)
        for i, item in enumerate(inputs):
            if isinstance(item, Mapping):
                missing = [name for name in self.feature_names if name not in item]
                extra = sorted(set(item) - set(self.feature_names))
                if missing or extra:
                    raise ValueError(
                        f"input {i}: missing features {missing[:5]}, unknown {extra[:5]}"
                    )
                values = [item[name] for name in self.feature_names]
            elif isinstance(item, Sequence) and not isinstance(item, str):
                if len(item) != n:
                    raise ValueError(f"input {i}: {len(item)} values, expected {n}")
                values = list(item)
            else:
                raise ValueError(f"input {i}: expected an object or a list of {n} numbers")
            for value in values:
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError(f"input {i}: features must be numbers")
                if not math.isfinite(value):
                    raise ValueError(f"input {i}: features must be finite")
            rows[i] = values
        standardised: npt.NDArray[np.float32] = (
            (rows - np.asarray(self.mean)) / np.asarray(self.scale)
        ).astype(np.float32)
        return standardised

    def transform_array(self, rows: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        """Raw feature rows ``(n, n_features)`` in feature order to standardised float32
        features, as ``transform`` makes of the same rows; ValueError if a value is not
        finite (the message names the feature, never a value)."""
        values = np.asarray(rows, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != len(self.feature_names):
            raise ValueError(
                f"expected rows of {len(self.feature_names)} features, got shape {values.shape}"
            )
        mean, scale = self._arrays
        standardised: npt.NDArray[np.float32] = ((values - mean) / scale).astype(np.float32)
        # One sum finds a NaN or an infinity anywhere (they propagate); only then, or if
        # the float32 sum overflowed, is each column looked at.
        if not np.isfinite(standardised.sum()):
            finite = np.isfinite(values).all(axis=0)
            bad = [self.feature_names[i] for i in np.flatnonzero(~finite)]
            if bad:
                raise ValueError(
                    f"features must be finite numbers; not so in column(s) {', '.join(bad[:10])}"
                )
        return standardised

    @cached_property
    def _arrays(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        return np.asarray(self.mean, dtype=np.float64), np.asarray(self.scale, dtype=np.float64)


def input_schema(info: DatasetInfo) -> dict[str, Any]:
    """JSON schema of one tabular input."""
    number = {"type": "number"}
    return {
        "oneOf": [
            {
                "type": "object",
                "properties": {name: number for name in info.feature_names},
                "required": list(info.feature_names),
                "additionalProperties": False,
            },
            {
                "type": "array",
                "items": number,
                "minItems": info.n_features,
                "maxItems": info.n_features,
            },
        ]
    }


def format_outputs(info: DatasetInfo, predictions: npt.NDArray[Any]) -> list[Any]:
    """One JSON value per row of ``predict_arrays``'s output."""
    if info.task == "regression":
        return [float(value) for value in predictions]
    labels = list(info.classes)
    return [
        {
            "label": labels[int(np.argmax(row))],
            "probabilities": {str(label): float(p) for label, p in zip(labels, row, strict=True)},
        }
        for row in predictions
    ]
