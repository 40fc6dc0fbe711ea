"""How a dataset's rows are split into train, validation and test parts.

Every built-in loader (tabular ``sklearn:``/``csv:``, ``npz:`` images, ``text:``) splits by
the same sizes, from ``DataSpec.test_size``, ``DataSpec.validation_size`` and ``n`` rows:
- test: ``ceil(test_size * n)`` rows (as scikit-learn's ``train_test_split`` counts);
- validation: ``ceil(validation_size * n)`` rows, none when ``validation_size`` is 0;
- train: the rest.

Rows (tabular, images) are shuffled with ``DataSpec.seed`` and, for classifiers, split
stratified by class: the test rows are drawn from all rows first, then the validation
rows from those left. So a job without a validation split gets exactly the train and
test rows it got before validation splits existed. A text is cut into contiguous parts,
in order train, validation, test (no shuffling across a cut). The parts are disjoint and
together hold every row.

Words: a part is one of train, validation, test. ``split_problems`` and
``class_problems`` say in SpecError lines why rows cannot be split; the server calls
``split_problems`` at submit time when it knows the number of rows without reading them,
and the loaders call both on the rows they read, so the messages are the same. Nothing
here imports scikit-learn except ``split_indices``, lazily.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from dcsched.kinds.train import DataSpec

IndexArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class SplitSizes:
    """Rows in each part."""

    train: int
    validation: int
    test: int

    @property
    def parts(self) -> tuple[str, ...]:
        return ("train", "validation", "test") if self.validation else ("train", "test")

    def describe(self, what: str = "rows") -> str:
        if self.validation:
            return f"{self.train} train, {self.validation} validation and {self.test} test {what}"
        return f"{self.train} train and {self.test} test {what}"


def split_sizes(n_rows: int, data: DataSpec) -> SplitSizes:
    """The rows of each part for ``n_rows`` rows (some may be 0 or negative: see
    ``split_problems``)."""
    test = math.ceil(data.test_size * n_rows)
    validation = math.ceil(data.validation_size * n_rows) if data.has_validation else 0
    return SplitSizes(train=n_rows - test - validation, validation=validation, test=test)


def split_problems(
    n_rows: int, data: DataSpec, n_classes: int = 0, what: str = "rows"
) -> list[str]:
    """Why ``n_rows`` cannot be split as ``data`` says; [] if they can. ``n_classes``: the
    classes of a stratified split (each part needs one row of each), 0 for regression or
    a contiguous cut; ``what``: the word for a row in messages (images, characters)."""
    sizes = split_sizes(n_rows, data)
    need = max(1, n_classes)
    why = f"at least {need} (one per class, the split is stratified)" if n_classes else "at least 1"
    fields = {
        "train": "data.test_size, data.validation_size",
        "validation": "data.validation_size",
        "test": "data.test_size",
    }
    problems = []
    for part in sizes.parts:
        if getattr(sizes, part) < need:
            problems.append(
                f"{fields[part]}: {n_rows} {what} split into "
                f"{sizes.describe(what)}; the {part} part needs {why}: "
                "give more data or change the fractions"
            )
    return problems


def class_problems(
    class_counts: Mapping[Any, int], data: DataSpec, n_rows: int, what: str = "rows"
) -> list[str]:
    """Why a stratified split cannot place a row of every class in every part; [] if it
    can. ``class_counts``: rows of each class (by original label)."""
    parts = 3 if data.has_validation else 2
    rare = sorted(
        ((label, count) for label, count in class_counts.items() if count < parts),
        key=lambda item: (item[1], str(item[0])),
    )
    if not rare:
        return []
    field = "data.validation_size" if data.has_validation else "data.test_size"
    shown = ", ".join(f"{label!r} ({count})" for label, count in rare[:5])
    fix = "Give more data or set validation_size: 0" if data.has_validation else "Give more data"
    return [
        f"{field}: cannot split {n_rows} {what} stratified into {parts} parts: every class "
        f"needs at least {parts} {what} (one per part); too few for {len(rare)} class(es): "
        f"{shown}. {fix}"
    ]


def split_indices(
    y: npt.NDArray[Any], data: DataSpec, stratified: bool
) -> tuple[IndexArray, IndexArray, IndexArray]:
    """Row indices of the train, validation and test parts (validation empty when
    ``data.validation_size`` is 0), shuffled with ``data.seed``; stratified by ``y`` if
    ``stratified``. Raises ValueError (scikit-learn's) if a stratified split is impossible."""
    from sklearn.model_selection import train_test_split

    n_rows = len(y)
    sizes = split_sizes(n_rows, data)
    rows = np.arange(n_rows, dtype=np.int64)
    rest, test = train_test_split(
        rows,
        test_size=sizes.test,
        random_state=data.seed,
        stratify=y if stratified else None,
    )
    if not sizes.validation:
        return rest, np.zeros(0, dtype=np.int64), test
    train, validation = train_test_split(
        rest,
        test_size=sizes.validation,
        random_state=data.seed,
        stratify=y[rest] if stratified else None,
    )
    return train, validation, test


def contiguous_parts(n_rows: int, data: DataSpec) -> tuple[slice, slice, slice]:
    """The train, validation and test parts of a contiguous cut (a text), in that order."""
    sizes = split_sizes(n_rows, data)
    first_validation = sizes.train
    first_test = sizes.train + sizes.validation
    return slice(0, first_validation), slice(first_validation, first_test), slice(first_test, None)
