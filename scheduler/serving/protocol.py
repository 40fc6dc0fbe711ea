"""The request and response bodies a replica speaks, decoded and checked (no sockets here).

Two protocols over the same model:
- the seed's: ``POST /predict`` with ``{"features": [...]}`` -> ``{"prediction": ...}``,
  or ``{"instances": [[...], ...]}`` -> ``{"predictions": [...]}``. A feature vector is a
  list of numbers in the model's feature order, or an object ``{feature name: number}``;
- the Open Inference Protocol v2 (KServe, Triton): ``POST /v2/models/NAME/infer`` with
  one input tensor ``{"name", "shape": [rows, features], "datatype", "data"}``; the answer
  has ``label`` and ``probabilities`` tensors for classifiers, ``prediction`` for
  regression.

Every problem with a body is a ``BadRequest`` carrying its HTTP status (400, 404, 413, 422)
and a sentence saying what is wrong and what was expected: never a 500.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import orjson

MAX_BODY_BYTES = 4 * 1024 * 1024
"""Largest request body a replica reads (413 beyond)."""
MAX_INSTANCES = 10_000
"""Most feature vectors in one request."""

OIP_NUMERIC = frozenset(
    {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"}
    | {"FP16", "FP32", "FP64"}
)


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def decode_json(body: bytes) -> Any:
    if not body:
        raise BadRequest(400, 'the request has no body; send JSON like {"features": [...]}')
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(400, f"the body is not valid JSON ({exc})") from None


class FeatureShape:
    """What one input must look like: ``n`` numbers, or an object with these names."""

    def __init__(self, feature_names: Sequence[str]):
        self.names = tuple(feature_names)
        self.n = len(self.names)
        self._index = {name: i for i, name in enumerate(self.names)}

    def row(self, value: Any, where: str) -> list[Any]:
        """One checked feature vector (a list of ``n`` ints/floats) or BadRequest."""
        if type(value) is list:
            if len(value) != self.n:
                raise BadRequest(
                    422, f"{where} has {len(value)} values; the model takes {self.n} features"
                )
            for item in value:
                kind = type(item)
                if kind is not float and kind is not int:
                    raise BadRequest(
                        422, f"{where}: features must be numbers, got {_type_name(item)}"
                    )
                if kind is float and not math.isfinite(item):
                    raise BadRequest(422, f"{where}: features must be finite numbers")
                if kind is int and not -1e300 < item < 1e300:
                    raise BadRequest(422, f"{where}: feature {item:.3g} is out of range")
            return value
        if isinstance(value, dict):
            missing = [name for name in self.names if name not in value]
            extra = sorted(str(key) for key in value if key not in self._index)
            if missing or extra:
                raise BadRequest(
                    422,
                    f"{where}: missing features {missing[:5]}, unknown features {extra[:5]}",
                )
            return self.row([value[name] for name in self.names], where)
        raise BadRequest(
            422,
            f"{where} must be a list of {self.n} numbers or an object of feature values, "
            f"not {_type_name(value)}",
        )


def decode_predict(body: bytes, shape: FeatureShape) -> tuple[list[list[Any]], bool]:
    """``(rows, single)`` of a ``/predict`` body; ``single`` for ``{"features": ...}``."""
    document = decode_json(body)
    if not isinstance(document, dict):
        raise BadRequest(
            400, 'the body must be a JSON object: {"features": [...]} or {"instances": [...]}'
        )
    if "features" in document and "instances" in document:
        raise BadRequest(400, 'give either "features" (one input) or "instances", not both')
    if "features" in document:
        return [shape.row(document["features"], "features")], True
    if "instances" in document:
        instances = document["instances"]
        if type(instances) is not list or not instances:
            raise BadRequest(422, '"instances" must be a non-empty list of feature vectors')
        if len(instances) > MAX_INSTANCES:
            raise BadRequest(
                413, f'"instances" has {len(instances)} inputs; at most {MAX_INSTANCES} a request'
            )
        return [shape.row(item, f"instances[{i}]") for i, item in enumerate(instances)], False
    keys = ", ".join(sorted(str(k) for k in document)[:5]) or "none"
    raise BadRequest(400, f'the body needs "features" or "instances"; it has: {keys}')


def decode_oip(body: bytes, shape: FeatureShape) -> tuple[list[list[Any]], Any]:
    """``(rows, request id)`` of an OIP v2 infer body (one input tensor)."""
    document = decode_json(body)
    if not isinstance(document, dict) or type(document.get("inputs")) is not list:
        raise BadRequest(400, 'an infer request is an object with "inputs": [tensor]')
    inputs = document["inputs"]
    if len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadRequest(
            400, f"the model takes one input tensor of shape [rows, {shape.n}]; got {len(inputs)}"
        )
    tensor = inputs[0]
    datatype = tensor.get("datatype")
    if datatype not in OIP_NUMERIC:
        raise BadRequest(400, f"inputs[0].datatype must be numeric (e.g. FP32), not {datatype!r}")
    dims = tensor.get("shape")
    if (
        type(dims) is not list
        or not 1 <= len(dims) <= 2
        or any(type(d) is not int or d < 1 for d in dims)
    ):
        raise BadRequest(400, f"inputs[0].shape must be [rows, {shape.n}] (or [{shape.n}])")
    rows_n, cols = (1, dims[0]) if len(dims) == 1 else (dims[0], dims[1])
    if cols != shape.n:
        raise BadRequest(422, f"inputs[0].shape {dims}: the model takes {shape.n} features a row")
    if rows_n > MAX_INSTANCES:
        raise BadRequest(413, f"inputs[0] has {rows_n} rows; at most {MAX_INSTANCES} a request")
    data = tensor.get("data")
    if type(data) is not list:
        raise BadRequest(400, "inputs[0].data must be a list (flat, row-major, or nested rows)")
    if data and type(data[0]) is list:
        flat = [value for row in data for value in (row if type(row) is list else [row])]
    else:
        flat = data
    if len(flat) != rows_n * cols:
        raise BadRequest(
            422, f"inputs[0].data has {len(flat)} values; shape {dims} needs {rows_n * cols}"
        )
    if datatype == "BOOL":
        flat = [float(v) if type(v) is bool else v for v in flat]
    rows = [shape.row(flat[i * cols : (i + 1) * cols], f"inputs[0] row {i}") for i in range(rows_n)]
    return rows, document.get("id")


def oip_outputs(predictions: list[Any]) -> list[dict[str, Any]]:
    """OIP output tensors of the plugin's JSON predictions (one per row)."""
    n = len(predictions)
    if predictions and isinstance(predictions[0], dict) and "probabilities" in predictions[0]:
        labels = [p["label"] for p in predictions]
        classes = list(predictions[0]["probabilities"])
        probabilities = [p["probabilities"][c] for p in predictions for c in classes]
        numeric = all(type(label) is int for label in labels)
        return [
            {
                "name": "label",
                "shape": [n],
                "datatype": "INT64" if numeric else "BYTES",
                "data": labels if numeric else [str(label) for label in labels],
            },
            {
                "name": "probabilities",
                "shape": [n, len(classes)],
                "datatype": "FP64",
                "data": probabilities,
                "parameters": {"classes": classes},
            },
        ]
    return [{"name": "prediction", "shape": [n], "datatype": "FP64", "data": predictions}]


def _type_name(value: Any) -> str:
    return {
        str: "a string",
        bool: "a boolean",
        type(None): "null",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)
