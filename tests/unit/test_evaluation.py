"""evaluate() agrees with sklearn.metrics on the same predictions."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics

from dcsched.plugins.api import DatasetInfo
from dcsched.training.evaluation import CLASSIFIER_METRICS, REGRESSION_METRICS, evaluate

pytestmark = pytest.mark.filterwarnings(
    "ignore::sklearn.exceptions.UndefinedMetricWarning", "ignore::UserWarning"
)


def _info(k: int) -> DatasetInfo:
    if k == 0:
        return DatasetInfo("regression", 1, (), ("x",))
    return DatasetInfo("binary" if k == 2 else "multiclass", 1, tuple(range(k)), ("x",))


def _sk_log_loss(y: np.ndarray, p: np.ndarray, k: int) -> float:
    labels = list(range(k))
    # sklearn 1.9 renamed y_pred to y_proba; older releases only know y_pred.
    if "y_proba" in inspect.signature(metrics.log_loss).parameters:
        return float(metrics.log_loss(y, y_proba=p, labels=labels))
    return float(metrics.log_loss(y, p, labels=labels))


def _sklearn_classifier(y: np.ndarray, p: np.ndarray, k: int) -> dict[str, float]:
    pred = np.argmax(p, axis=1)
    kw: dict[str, Any] = {"average": "binary", "pos_label": 1} if k == 2 else {"average": "macro"}
    return {
        "accuracy": metrics.accuracy_score(y, pred),
        "precision": metrics.precision_score(y, pred, **kw),
        "recall": metrics.recall_score(y, pred, **kw),
        "f1": metrics.f1_score(y, pred, **kw),
        "log_loss": _sk_log_loss(y, p, k),
    }


def _sklearn_regression(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    mse = metrics.mean_squared_error(y, pred)
    return {
        "mse": mse,
        "rmse": float(np.sqrt(mse)),
        "mae": metrics.mean_absolute_error(y, pred),
        "r2": metrics.r2_score(y, pred),
    }


def _assert_close(ours: dict[str, float], theirs: dict[str, float]) -> None:
    assert set(ours) == set(theirs)
    for name, value in theirs.items():
        assert isinstance(ours[name], float)
        assert ours[name] == pytest.approx(float(value), rel=1e-9, abs=1e-9), name


def test_binary_matches_sklearn() -> None:
    y = np.array([0, 1, 1, 0, 1, 1, 0, 0, 1, 1])
    positive = np.array([0.1, 0.8, 0.4, 0.3, 0.9, 0.7, 0.6, 0.2, 0.55, 0.35])
    p = np.column_stack([1 - positive, positive])
    ours = evaluate(_info(2), y, p)
    assert tuple(ours) == CLASSIFIER_METRICS
    _assert_close(ours, _sklearn_classifier(y, p, 2))
    # tp=4 (1,4,5,8), fp=1 (6), fn=2 (2,9): hand-checked.
    assert ours["precision"] == pytest.approx(4 / 5)
    assert ours["recall"] == pytest.approx(4 / 6)
    assert ours["accuracy"] == pytest.approx(7 / 10)


def test_multiclass_macro_over_present_classes_matches_sklearn() -> None:
    # Class 3 occurs in neither y_true nor the predictions: macro averaging skips it.
    y = np.array([0, 1, 2, 2, 1, 0, 2])
    p = np.array(
        [
            [0.7, 0.1, 0.1, 0.1],
            [0.2, 0.5, 0.2, 0.1],
            [0.1, 0.6, 0.2, 0.1],
            [0.1, 0.1, 0.7, 0.1],
            [0.3, 0.3, 0.3, 0.1],  # tie: the first most probable class (0) wins
            [0.4, 0.3, 0.2, 0.1],
            [0.2, 0.2, 0.5, 0.1],
        ]
    )
    ours = evaluate(_info(4), y, p)
    _assert_close(ours, _sklearn_classifier(y, p, 4))


def test_zero_division_counts_as_zero() -> None:
    y = np.array([1, 1, 0])
    p = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]])  # never predicts the positive class
    ours = evaluate(_info(2), y, p)
    assert ours["precision"] == 0.0
    assert ours["recall"] == 0.0
    assert ours["f1"] == 0.0
    _assert_close(ours, _sklearn_classifier(y, p, 2))


def test_log_loss_clips_certain_mistakes_like_sklearn() -> None:
    y = np.array([0, 1, 2])
    p = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    ours = evaluate(_info(3), y, p)
    assert np.isfinite(ours["log_loss"])
    assert ours["log_loss"] == pytest.approx(_sk_log_loss(y, p, 3), rel=1e-12)
    p32 = p.astype(np.float32)
    assert evaluate(_info(3), y, p32)["log_loss"] == pytest.approx(
        _sk_log_loss(y, p32, 3), rel=1e-6
    )


def test_regression_matches_sklearn() -> None:
    y = np.array([3.0, -0.5, 2.0, 7.0])
    pred = np.array([2.5, 0.0, 2.0, 8.0])
    ours = evaluate(_info(0), y, pred)
    assert tuple(ours) == REGRESSION_METRICS
    _assert_close(ours, _sklearn_regression(y, pred))
    assert ours["mse"] == pytest.approx(0.375)


def test_regression_constant_target_r2_like_sklearn() -> None:
    y = np.array([2.0, 2.0, 2.0])
    assert evaluate(_info(0), y, y.copy())["r2"] == 1.0 == metrics.r2_score(y, y)
    off = np.array([2.0, 2.5, 2.0])
    assert evaluate(_info(0), y, off)["r2"] == 0.0 == metrics.r2_score(y, off)


@pytest.mark.parametrize(
    ("k", "y", "p", "message"),
    [
        (2, [0, 1], [[0.5, 0.5]], "shape"),
        (3, [0, 1], [[0.5, 0.5], [0.5, 0.5]], "shape"),
        (2, [0, 2], [[0.5, 0.5], [0.5, 0.5]], "class indices"),
        (0, [1.0, 2.0], [[1.0], [2.0]], "same shape"),
        (0, [], [], "empty"),
    ],
)
def test_bad_inputs_are_refused(k: int, y: list[Any], p: list[Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate(_info(k), np.array(y), np.array(p))


@st.composite
def _classification_case(draw: st.DrawFn) -> tuple[int, np.ndarray, np.ndarray]:
    k = draw(st.integers(2, 5))
    n = draw(st.integers(1, 40))
    y = np.array(draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    weights = np.array(
        draw(
            st.lists(
                st.lists(st.floats(0.0, 1.0), min_size=k, max_size=k).filter(
                    lambda row: sum(row) > 1e-3
                ),
                min_size=n,
                max_size=n,
            )
        )
    )
    return k, y, weights / weights.sum(axis=1, keepdims=True)


@settings(max_examples=60, deadline=None)
@given(_classification_case())
def test_classification_matches_sklearn_on_random_inputs(
    case: tuple[int, np.ndarray, np.ndarray],
) -> None:
    k, y, p = case
    _assert_close(evaluate(_info(k), y, p), _sklearn_classifier(y, p, k))


@settings(max_examples=60, deadline=None)
@given(
    st.integers(2, 40).flatmap(
        lambda n: st.tuples(
            st.lists(st.floats(-1e3, 1e3), min_size=n, max_size=n),
            st.lists(st.floats(-1e3, 1e3), min_size=n, max_size=n),
        )
    )
)
def test_regression_matches_sklearn_on_random_inputs(
    case: tuple[list[float], list[float]],
) -> None:
    y, pred = np.array(case[0]), np.array(case[1])
    ours = evaluate(_info(0), y, pred)
    theirs = _sklearn_regression(y, pred)
    for name in ("mse", "rmse", "mae"):
        assert ours[name] == pytest.approx(theirs[name], rel=1e-9, abs=1e-9), name
    # r2 divides by the target's spread: compare where that spread is not float noise.
    if np.ptp(y) > 1e-6:
        assert ours["r2"] == pytest.approx(theirs["r2"], rel=1e-7, abs=1e-7)
