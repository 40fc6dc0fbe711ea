"""Data for training jobs: check a ``DataSpec`` cheaply, then load, split and scale it.

Sources (``DataSpec.source``):
- ``sklearn:NAME``: a dataset that ships inside scikit-learn (no download), one of
  ``SKLEARN_DATASETS``.
- ``csv:PATH``: a CSV file with a header row; ``DataSpec.target`` names the column to
  predict and every other column is a numeric feature. A relative PATH is relative to the
  current directory (the CLI makes it absolute before submitting).

Task detection for CSV targets: a non-numeric target, or an integer-valued one with at
most ``MAX_CLASSES`` distinct values, is a classification target (``binary`` with two
classes, else ``multiclass``); any other numeric target is ``regression``.

Invariants of ``PreparedData``: features are float32, standardised with a scaler fitted
on the training rows only; targets are int64 class indices ``0..k-1`` (labels in sorted
order, ``info.classes[i]`` is the original label of index i) or float32 values. The split
into train, validation (when ``DataSpec.validation_size`` > 0) and test rows is
``dcsched.training.splits``': deterministic for a given ``DataSpec.seed``, stratified for
classifiers, the three parts disjoint.

``check_source`` is for the server at submit time: it never imports torch, never imports
scikit-learn, and reads at most a CSV's header. For an ``sklearn:`` source it also checks
that the rows split into non-empty parts (``SKLEARN_SIZES``); a CSV's rows are counted
only when the job loads them.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from dcsched.core.spec import SpecError
from dcsched.kinds.train import DataSpec
from dcsched.plugins.api import ClassLabel, DatasetInfo, TaskType
from dcsched.training.splits import class_problems, split_indices, split_problems

logger = logging.getLogger(__name__)

SKLEARN_DATASETS: dict[str, TaskType] = {
    "breast_cancer": "binary",
    "iris": "multiclass",
    "wine": "multiclass",
    "digits": "multiclass",
    "diabetes": "regression",
}
SKLEARN_SIZES: dict[str, tuple[int, int]] = {
    "breast_cancer": (569, 2),
    "iris": (150, 3),
    "wine": (178, 3),
    "digits": (1797, 10),
    "diabetes": (442, 0),
}
"""Rows and classes (0: regression) of each ``SKLEARN_DATASETS`` entry, for the split
check at submit (the unit tests compare them with scikit-learn's)."""
MAX_HEADER_BYTES = 1024 * 1024
MAX_CLASSES = 20
"""An integer-valued CSV target with more distinct values than this is regression."""


@dataclass(frozen=True)
class PreparedData:
    """A dataset split into train, validation and test parts, features standardised.
    ``x_val``/``y_val`` are None when ``DataSpec.validation_size`` is 0."""

    x_train: npt.NDArray[np.float32]
    x_test: npt.NDArray[np.float32]
    y_train: npt.NDArray[Any]
    y_test: npt.NDArray[Any]
    x_val: npt.NDArray[np.float32] | None
    y_val: npt.NDArray[Any] | None
    info: DatasetInfo
    scaler_mean: npt.NDArray[np.float64]
    """Per-feature mean of the raw training rows."""
    scaler_scale: npt.NDArray[np.float64]
    """Per-feature standard deviation of the raw training rows (1 where it is 0)."""

    @property
    def n_train(self) -> int:
        return len(self.x_train)

    @property
    def n_test(self) -> int:
        return len(self.x_test)

    @property
    def n_val(self) -> int:
        return 0 if self.x_val is None else len(self.x_val)


def check_source(data: DataSpec) -> None:
    """Raise SpecError if the source cannot be loaded; cheap (a CSV's header at most)."""
    if data.scheme == "sklearn":
        _sklearn_task(data.location)
        rows, classes = SKLEARN_SIZES[data.location]
        problems = split_problems(rows, data, classes)
        if problems:
            raise SpecError(problems)
        return
    path = _csv_path(data)
    header = _read_header(path)
    if data.target not in header:
        raise SpecError(
            [
                f"data.target: column {data.target!r} is not in the CSV file's header "
                f"({len(header)} columns); check the name and its case"
            ]
        )


def load_dataset(data: DataSpec) -> PreparedData:
    """Load, split (``data.test_size``, ``data.seed``) and standardise; SpecError if unusable."""
    if data.scheme == "sklearn":
        x, labels, task, feature_names = _load_sklearn(data.location)
    else:
        x, labels, task, feature_names = _load_csv(data)
    return _prepare(data, x, labels, task, feature_names)


# -- sklearn -----------------------------------------------------------------------------


def _sklearn_task(name: str) -> TaskType:
    task = SKLEARN_DATASETS.get(name)
    if task is None:
        raise SpecError(
            [f"data.source: unknown sklearn dataset {name!r}; known: {', '.join(SKLEARN_DATASETS)}"]
        )
    return task


def _load_sklearn(
    name: str,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[Any], TaskType, list[str]]:
    task = _sklearn_task(name)
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, f"load_{name}")()
    x = np.asarray(bunch.data, dtype=np.float64)
    names = [str(feature) for feature in bunch.feature_names]
    labels = np.asarray(bunch.target)
    if task != "regression":
        labels = labels.astype(np.int64)
    return x, labels, task, names


# -- CSV ---------------------------------------------------------------------------------


def _csv_path(data: DataSpec) -> Path:
    path = Path(data.location)
    if not path.exists():
        raise SpecError([f"data.source: CSV file {str(path)!r} does not exist"])
    if not path.is_file():
        raise SpecError([f"data.source: {str(path)!r} is not a file"])
    return path


def _read_header(path: Path) -> list[str]:
    """The header row, read from at most the file's first ``MAX_HEADER_BYTES``; errors
    never quote the file's contents."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(MAX_HEADER_BYTES)
        first = head.split(b"\n", 1)
        if len(first) == 1 and len(head) == MAX_HEADER_BYTES:
            raise SpecError(
                [f"data.source: the CSV file's first line is longer than {MAX_HEADER_BYTES} bytes"]
            )
        header = next(csv.reader([first[0].decode("utf-8-sig").rstrip("\r")]), None)
    except OSError as exc:
        raise SpecError(
            [f"data.source: cannot read CSV file {str(path)!r}: {exc.strerror}"]
        ) from None
    except UnicodeDecodeError:
        raise SpecError([f"data.source: CSV file {str(path)!r} is not UTF-8 text"]) from None
    except csv.Error:
        raise SpecError([f"data.source: CSV file {str(path)!r} has a malformed header"]) from None
    if not header or not any(cell.strip() for cell in header):
        raise SpecError([f"data.source: CSV file {str(path)!r} has no header row"])
    return [cell.strip() for cell in header]


def _load_csv(
    data: DataSpec,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[Any], TaskType, list[str]]:
    check_source(data)
    path = _csv_path(data)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = [cell.strip() for cell in next(reader)]
            rows = [
                (reader.line_num, [cell.strip() for cell in row])
                for row in reader
                if any(cell.strip() for cell in row)
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SpecError([f"data.source: cannot read CSV file {str(path)!r}: {exc}"]) from None

    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise SpecError([f"data.source: {path} repeats column names: {', '.join(duplicates)}"])
    bad_width = [(line, len(row)) for line, row in rows if len(row) != len(header)]
    if bad_width:
        line, width = bad_width[0]
        raise SpecError(
            [
                f"data.source: line {line} of {path} has {width} fields, the header has "
                f"{len(header)} ({len(bad_width)} such lines)"
            ]
        )
    if len(rows) < 2:
        raise SpecError([f"data.source: {path} has {len(rows)} data rows; at least 2 needed"])

    lines = [line for line, _ in rows]
    columns = list(zip(*(row for _, row in rows), strict=True))
    target_index = header.index(str(data.target))
    feature_names = [name for i, name in enumerate(header) if i != target_index]
    if not feature_names:
        raise SpecError([f"data.source: {path} has no feature columns besides the target"])

    problems: list[str] = []
    non_numeric: list[str] = []
    features = []
    for name, column in zip(header, columns, strict=True):
        if name == data.target:
            continue
        values, bad = _to_float(column)
        if values is None:
            non_numeric.append(f"{name} (line {lines[bad]}: {column[bad]!r})")
        elif bad >= 0:
            problems.append(
                f"data.source: column {name!r} has a missing or non-finite value on line "
                f"{lines[bad]}; fill or drop such rows"
            )
        else:
            features.append(values)
    if non_numeric:
        problems.insert(
            0,
            f"data.source: feature columns must be numeric; not numeric: {', '.join(non_numeric)}",
        )
    target_column = columns[target_index]
    missing = [i for i, value in enumerate(target_column) if value == ""]
    if missing:
        problems.append(
            f"data.target: column {data.target!r} is empty on line {lines[missing[0]]} "
            f"({len(missing)} rows); drop rows without a target"
        )
    if problems:
        raise SpecError(problems)

    labels, task = _csv_target(str(data.target), target_column, lines)
    return np.column_stack(features), labels, task, feature_names


def _to_float(column: tuple[str, ...]) -> tuple[npt.NDArray[np.float64] | None, int]:
    """(values, -1) if all finite; (values, i) if row i is missing; (None, i) if non-numeric."""
    try:
        values = np.asarray(column, dtype=str).astype(np.float64)
    except ValueError:
        for i, cell in enumerate(column):
            if cell == "":
                continue
            try:
                float(cell)
            except ValueError:
                return None, i
        return np.zeros(0), column.index("")
    not_finite = np.flatnonzero(~np.isfinite(values))
    return values, int(not_finite[0]) if len(not_finite) else -1


def _csv_target(
    name: str, column: tuple[str, ...], lines: list[int]
) -> tuple[npt.NDArray[Any], TaskType]:
    values, bad = _to_float(column)
    if values is None:
        labels: npt.NDArray[Any] = np.asarray(column, dtype=object)
        n_classes = len(set(column))
    else:
        if bad >= 0:
            raise SpecError(
                [
                    f"data.target: column {name!r} is not finite on line {lines[bad]}: "
                    f"{column[bad]!r}"
                ]
            )
        distinct = np.unique(values)
        if len(distinct) > MAX_CLASSES or not np.all(distinct == np.round(distinct)):
            return values, "regression"
        labels = values.astype(np.int64)
        n_classes = len(distinct)
    if n_classes < 2:
        raise SpecError([f"data.target: column {name!r} has a single value; nothing to learn"])
    return labels, "binary" if n_classes == 2 else "multiclass"


# -- split and scale ---------------------------------------------------------------------


def _prepare(
    data: DataSpec,
    x: npt.NDArray[np.float64],
    labels: npt.NDArray[Any],
    task: TaskType,
    feature_names: list[str],
) -> PreparedData:
    from sklearn.preprocessing import StandardScaler

    classes: tuple[ClassLabel, ...] = ()
    if task == "regression":
        y = labels.astype(np.float32)
    else:
        sorted_labels = sorted(set(labels.tolist()))
        classes = tuple(sorted_labels)
        index = {label: i for i, label in enumerate(sorted_labels)}
        y = np.fromiter(
            (index[label] for label in labels.tolist()), dtype=np.int64, count=len(labels)
        )
    stratified = task != "regression"
    problems = split_problems(len(x), data, len(classes))
    if stratified and not problems:
        counts = np.bincount(y, minlength=len(classes))
        problems = class_problems(dict(zip(classes, counts.tolist(), strict=True)), data, len(x))
    if problems:
        raise SpecError(problems)
    try:
        train, validation, test = split_indices(y, data, stratified)
    except ValueError as exc:
        parts = "train, validation and test" if data.has_validation else "train and test"
        raise SpecError(
            [f"data.test_size: cannot split {len(x)} rows into {parts} parts: {exc}"]
        ) from None
    x_train, y_train = x[train], y[train]
    scaler = StandardScaler().fit(x_train)
    info = DatasetInfo(
        task=task,
        n_features=x.shape[1],
        classes=classes,
        feature_names=tuple(feature_names),
    )
    logger.debug(
        "prepared %s: %s train, %s validation, %s test rows",
        data.source,
        len(train),
        len(validation),
        len(test),
    )

    def scaled(rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        standardised: npt.NDArray[np.float32] = scaler.transform(x[rows]).astype(np.float32)
        return standardised

    return PreparedData(
        x_train=scaled(train),
        x_test=scaled(test),
        y_train=y_train,
        y_test=y[test],
        x_val=scaled(validation) if len(validation) else None,
        y_val=y[validation] if len(validation) else None,
        info=info,
        scaler_mean=np.asarray(scaler.mean_, dtype=np.float64),
        scaler_scale=np.asarray(scaler.scale_, dtype=np.float64),
    )
