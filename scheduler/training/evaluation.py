"""Test-set metrics, in plain numpy, computed over the whole test set at once.

They agree with scikit-learn's defaults (the unit tests compare them):

- classifiers (``predictions`` are class probabilities ``(n, k)``; the predicted class is
  the most probable one, the first on ties):
  - ``accuracy``;
  - ``precision``, ``recall``, ``f1``: for binary tasks of the positive class, index 1;
    for multiclass tasks the unweighted mean over classes (macro), over the classes that
    occur in the true or the predicted labels, as sklearn's ``average="macro"`` does;
    a ratio whose denominator is zero counts as 0.0, sklearn's default
    (``zero_division="warn"``, which warns and returns 0.0);
  - ``log_loss``: mean negative log-probability of the true class, probabilities clipped
    to ``[eps, 1 - eps]`` with ``eps`` the machine epsilon of their dtype, like
    ``sklearn.metrics.log_loss`` (no renormalisation).
- regression (``predictions`` are values ``(n,)``): ``mse``, ``rmse``, ``mae`` and ``r2``
  (1.0 for a perfect fit of a constant target, 0.0 for an imperfect one, like sklearn's
  ``force_finite=True``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from dcsched.plugins.api import CLASSIFIER_METRICS, REGRESSION_METRICS, DatasetInfo

__all__ = ["CLASSIFIER_METRICS", "REGRESSION_METRICS", "evaluate"]


def evaluate(
    info: DatasetInfo, y_true: npt.NDArray[Any], predictions: npt.NDArray[Any]
) -> dict[str, float]:
    """Metrics of ``predictions`` against ``y_true`` (class indices or values)."""
    y_true = np.asarray(y_true)
    predictions = np.asarray(predictions)
    if len(y_true) == 0:
        raise ValueError("cannot evaluate on an empty test set")
    if info.task == "regression":
        if predictions.shape != y_true.shape or y_true.ndim != 1:
            raise ValueError(
                f"regression needs y_true and predictions of the same shape (n,), got "
                f"{y_true.shape} and {predictions.shape}"
            )
        return _regression(y_true.astype(np.float64), predictions.astype(np.float64))
    expected = (len(y_true), info.n_classes)
    if predictions.shape != expected:
        raise ValueError(
            f"expected class probabilities of shape {expected}, got {predictions.shape}"
        )
    labels = y_true.astype(np.int64)
    if labels.min() < 0 or labels.max() >= info.n_classes:
        raise ValueError(f"y_true must hold class indices 0..{info.n_classes - 1}")
    return _classification(info, labels, predictions)


def _classification(
    info: DatasetInfo, y_true: npt.NDArray[np.int64], probabilities: npt.NDArray[Any]
) -> dict[str, float]:
    y_pred = np.argmax(probabilities, axis=1)
    k = info.n_classes
    true_positive = np.bincount(y_true[y_true == y_pred], minlength=k).astype(np.float64)
    predicted = np.bincount(y_pred, minlength=k).astype(np.float64)
    actual = np.bincount(y_true, minlength=k).astype(np.float64)
    precision = _ratio(true_positive, predicted)
    recall = _ratio(true_positive, actual)
    f1 = _ratio(2 * true_positive, predicted + actual)
    # binary: the positive class; multiclass: classes seen in y_true or y_pred (macro)
    chosen = np.array([1]) if info.task == "binary" else np.flatnonzero(predicted + actual > 0)

    if not np.issubdtype(probabilities.dtype, np.floating):
        probabilities = probabilities.astype(np.float64)
    eps = np.finfo(probabilities.dtype).eps
    p_true = np.clip(probabilities[np.arange(len(y_true)), y_true], eps, 1 - eps)
    return {
        "accuracy": float(np.mean(y_pred == y_true)),
        "precision": float(np.mean(precision[chosen])),
        "recall": float(np.mean(recall[chosen])),
        "f1": float(np.mean(f1[chosen])),
        "log_loss": float(-np.mean(np.log(p_true.astype(np.float64)))),
    }


def _regression(
    y_true: npt.NDArray[np.float64], y_pred: npt.NDArray[np.float64]
) -> dict[str, float]:
    error = y_pred - y_true
    mse = float(np.mean(error**2))
    residual = float(np.sum(error**2))
    total = float(np.sum((y_true - y_true.mean()) ** 2))
    if total > 0:  # noqa: SIM108 -- a nested ternary would hide sklearn's force_finite rule
        r2 = 1.0 - residual / total
    else:
        r2 = 1.0 if residual == 0 else 0.0
    return {
        "mse": mse,
        "rmse": float(np.sqrt(mse)),
        "mae": float(np.mean(np.abs(error))),
        "r2": r2,
    }


def _ratio(numerator: npt.NDArray[np.float64], denominator: npt.NDArray[np.float64]) -> Any:
    """Elementwise numerator / denominator, 0.0 where the denominator is 0."""
    out = np.zeros_like(numerator)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out
