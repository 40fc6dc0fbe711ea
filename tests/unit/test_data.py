"""Loading, splitting and scaling data; the errors a user sees for bad sources."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

import dcsched.training.data as data_module
from dcsched.core.spec import SpecError
from dcsched.kinds.train import DataSpec
from dcsched.training.data import SKLEARN_DATASETS, check_source, load_dataset


def _csv(tmp_path: Path, text: str, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _spec(path: Path, target: str = "y", **kw: object) -> DataSpec:
    return DataSpec(source=f"csv:{path}", target=target, **kw)


def _error_text(excinfo: pytest.ExceptionInfo[SpecError]) -> str:
    return " | ".join(excinfo.value.problems)


def test_sklearn_dataset_is_split_typed_and_described() -> None:
    data = load_dataset(DataSpec(source="sklearn:breast_cancer", test_size=0.2, seed=42))
    assert data.x_train.dtype == np.float32 and data.x_test.dtype == np.float32
    assert data.y_train.dtype == np.int64 and data.y_test.dtype == np.int64
    assert (data.n_train, data.n_test) == (455, 114)
    assert data.x_train.shape == (455, 30)
    assert data.info.task == "binary"
    assert data.info.classes == (0, 1)
    assert data.info.feature_names[0] == "mean radius"
    assert set(np.unique(data.y_train)) == {0, 1}


def test_split_is_deterministic_and_depends_on_the_seed() -> None:
    spec = DataSpec(source="sklearn:iris", seed=7)
    first, second = load_dataset(spec), load_dataset(spec)
    for name in ("x_train", "x_test", "y_train", "y_test", "scaler_mean", "scaler_scale"):
        assert np.array_equal(getattr(first, name), getattr(second, name)), name
    other = load_dataset(DataSpec(source="sklearn:iris", seed=8))
    assert not np.array_equal(first.x_train, other.x_train)


def test_split_is_stratified_for_classifiers() -> None:
    data = load_dataset(DataSpec(source="sklearn:iris", test_size=0.2, seed=3))
    assert np.bincount(data.y_test).tolist() == [10, 10, 10]
    assert data.info.task == "multiclass" and data.info.classes == (0, 1, 2)


def test_scaler_is_fitted_on_the_training_rows_only() -> None:
    data = load_dataset(DataSpec(source="sklearn:breast_cancer", seed=42))
    raw = load_breast_cancer().data
    raw_train = data.x_train.astype(np.float64) * data.scaler_scale + data.scaler_mean
    # The stored scaler is the training rows' mean and standard deviation ...
    np.testing.assert_allclose(data.scaler_mean, raw_train.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(data.scaler_scale, raw_train.std(axis=0), rtol=1e-5)
    np.testing.assert_allclose(data.x_train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(data.x_train.std(axis=0), 1.0, atol=1e-4)
    # ... not the whole data set's, and the test rows are not centred by construction.
    assert not np.allclose(data.scaler_mean, raw.mean(axis=0), rtol=1e-4)
    assert np.abs(data.x_test.mean(axis=0)).max() > 0.01


def test_regression_dataset() -> None:
    data = load_dataset(DataSpec(source="sklearn:diabetes"))
    assert data.info.task == "regression" and data.info.classes == ()
    assert data.y_train.dtype == np.float32


def test_csv_text_labels_become_sorted_indices(tmp_path: Path) -> None:
    rows = [f"{i},{i % 5 * 0.5},{['pear', 'apple', 'fig'][i % 3]}" for i in range(30)]
    path = _csv(tmp_path, "a,b,y\n" + "\n".join(rows) + "\n\n")
    data = load_dataset(_spec(path, test_size=0.3, seed=1))
    assert data.info.task == "multiclass"
    assert data.info.classes == ("apple", "fig", "pear")
    assert data.info.feature_names == ("a", "b")
    assert data.n_train + data.n_test == 30
    # Rows with a == 1 (mod 3) are "apple" (index 0): invert the scaling to find them.
    a = data.x_train[:, 0] * data.scaler_scale[0] + data.scaler_mean[0]
    expected = np.array([{0: 2, 1: 0, 2: 1}[round(value) % 3] for value in a])
    assert np.array_equal(data.y_train, expected)


@pytest.mark.parametrize(
    ("targets", "task", "classes"),
    [
        (["3", "7"] * 10, "binary", (3, 7)),
        (["1.0", "2.0", "3.0"] * 7, "multiclass", (1, 2, 3)),
        ([str(i) for i in range(21)], "regression", ()),
        ([f"{i * 0.5}" for i in range(21)], "regression", ()),
    ],
)
def test_csv_task_detection(
    tmp_path: Path, targets: list[str], task: str, classes: tuple[int, ...]
) -> None:
    rows = [f"{i},{t}" for i, t in enumerate(targets)]
    path = _csv(tmp_path, "x,y\n" + "\n".join(rows) + "\n")
    data = load_dataset(_spec(path))
    assert data.info.task == task
    assert data.info.classes == classes


def test_unknown_sklearn_dataset_lists_the_known_ones() -> None:
    spec = DataSpec(source="sklearn:mnist")
    with pytest.raises(SpecError) as excinfo:
        check_source(spec)
    assert "mnist" in _error_text(excinfo)
    for name in SKLEARN_DATASETS:
        assert name in _error_text(excinfo)
    with pytest.raises(SpecError):
        load_dataset(spec)


def test_missing_csv_file(tmp_path: Path) -> None:
    spec = _spec(tmp_path / "nope.csv")
    with pytest.raises(SpecError, match="does not exist"):
        check_source(spec)
    with pytest.raises(SpecError, match="does not exist"):
        load_dataset(spec)
    with pytest.raises(SpecError, match="not a file"):
        check_source(_spec(tmp_path))


def test_unreadable_csv_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests run as root, who reads any file: fake the permission error at open().
    path = _csv(tmp_path, "x,y\n1,2\n")

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(data_module, "open", refuse, raising=False)
    with pytest.raises(SpecError, match=r"cannot read CSV file .*Permission denied"):
        check_source(_spec(path))


def test_undecodable_csv_file(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes(b"\xff\xfe\x00\x81x,y\n")
    with pytest.raises(SpecError, match="not UTF-8 text"):
        check_source(_spec(path))


def test_empty_csv_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no header"):
        check_source(_spec(_csv(tmp_path, "")))


def test_missing_target_column_is_named_but_the_file_is_never_quoted(tmp_path: Path) -> None:
    path = _csv(tmp_path, "height,secret-token-abc,label\n1,2,a\n")
    with pytest.raises(SpecError) as excinfo:
        check_source(_spec(path, target="class"))
    text = _error_text(excinfo)
    assert "'class'" in text and "3 columns" in text
    assert "secret-token-abc" not in text and "height" not in text
    assert excinfo.value.problems[0].startswith("data.target:")


def test_a_header_without_a_line_end_is_read_only_up_to_a_limit(tmp_path: Path) -> None:
    path = tmp_path / "huge.csv"
    with path.open("wb") as handle:  # sparse: 8 GiB of "first line" read as 1 MiB
        handle.truncate(8 * 1024**3)
    with pytest.raises(SpecError, match="first line is longer than"):
        check_source(_spec(path, target="y"))


def test_non_numeric_feature_is_named(tmp_path: Path) -> None:
    path = _csv(tmp_path, "size,colour,y\n1,red,0\n2,blue,1\n3,red,0\n4,blue,1\n")
    check_source(_spec(path))  # the header is fine; the values are not
    with pytest.raises(SpecError) as excinfo:
        load_dataset(_spec(path))
    text = _error_text(excinfo)
    assert "not numeric: colour (line 2: 'red')" in text
    assert "size" not in text


def test_missing_feature_value_is_located(tmp_path: Path) -> None:
    path = _csv(tmp_path, "a,y\n1,0\n,1\n3,0\n4,1\n")
    with pytest.raises(SpecError, match="column 'a' has a missing or non-finite value on line 3"):
        load_dataset(_spec(path))


def test_ragged_rows_and_single_class_targets(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"line 3 .* has 3 fields"):
        load_dataset(_spec(_csv(tmp_path, "a,y\n1,0\n2,1,5\n")))
    with pytest.raises(SpecError, match="single value"):
        load_dataset(_spec(_csv(tmp_path, "a,y\n1,0\n2,0\n3,0\n", name="one.csv")))


def test_too_rare_class_for_a_stratified_split(tmp_path: Path) -> None:
    path = _csv(tmp_path, "a,y\n" + "\n".join(f"{i},{int(i == 0)}" for i in range(10)) + "\n")
    with pytest.raises(SpecError, match=r"^data\.test_size: cannot split 10 rows"):
        load_dataset(_spec(path))


def test_check_source_imports_neither_torch_nor_sklearn(tmp_path: Path) -> None:
    path = _csv(tmp_path, "a,y\n1,0\n")
    code = (
        "import sys\n"
        "from dcsched.kinds.train import DataSpec\n"
        "from dcsched.training.data import check_source\n"
        f"check_source(DataSpec(source='csv:{path}', target='y'))\n"
        "check_source(DataSpec(source='sklearn:iris'))\n"
        "print(sorted(m for m in ('torch', 'sklearn') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


# -- validation split --------------------------------------------------------------------


def _raw_rows(data: data_module.PreparedData, x: np.ndarray) -> set[int]:
    """The indices in scikit-learn's breast cancer data of the (scaled) rows ``x``."""
    scaled = (load_breast_cancer().data - data.scaler_mean) / data.scaler_scale
    distances = ((x.astype(np.float64)[:, None, :] - scaled[None, :, :]) ** 2).sum(axis=2)
    assert distances.min(axis=1).max() < 1e-6  # each row is one of the data set's
    return set(np.argmin(distances, axis=1).tolist())


def test_validation_rows_are_held_out_apart_from_train_and_test_rows() -> None:
    spec = DataSpec(source="sklearn:breast_cancer", test_size=0.2, validation_size=0.2, seed=42)
    data = load_dataset(spec)
    assert data.x_val is not None and data.y_val is not None
    assert (data.n_train, data.n_val, data.n_test) == (341, 114, 114)
    train = _raw_rows(data, data.x_train)
    validation = _raw_rows(data, data.x_val)
    test = _raw_rows(data, data.x_test)
    assert len(train) + len(validation) + len(test) == 569  # every row once (they are distinct)
    assert not validation & test and not validation & train and not train & test
    # The test rows are those of a job without a validation split: adding one only takes
    # validation rows out of the training rows.
    without = load_dataset(spec.model_copy(update={"validation_size": 0.0}))
    assert without.x_val is None and without.n_val == 0
    assert np.array_equal(without.y_test, data.y_test)
    assert _raw_rows(without, without.x_test) == test
    assert _raw_rows(without, without.x_train) == train | validation


def test_the_scaler_ignores_the_validation_rows_and_the_split_is_stratified() -> None:
    data = load_dataset(DataSpec(source="sklearn:iris", validation_size=0.2, seed=3))
    assert data.x_val is not None and data.y_val is not None
    np.testing.assert_allclose(data.x_train.mean(axis=0), 0.0, atol=1e-5)
    assert np.abs(data.x_val.mean(axis=0)).max() > 0.01
    assert np.bincount(data.y_val).tolist() == [10, 10, 10]
    assert np.bincount(data.y_test).tolist() == [10, 10, 10]
    again = load_dataset(DataSpec(source="sklearn:iris", validation_size=0.2, seed=3))
    assert np.array_equal(again.x_val, data.x_val)


def test_sklearn_sizes_are_scikit_learns() -> None:
    import sklearn.datasets

    assert set(data_module.SKLEARN_SIZES) == set(SKLEARN_DATASETS)
    for name, (rows, classes) in data_module.SKLEARN_SIZES.items():
        target = getattr(sklearn.datasets, f"load_{name}")().target
        expected_classes = 0 if SKLEARN_DATASETS[name] == "regression" else len(set(target))
        assert (len(target), expected_classes) == (rows, classes), name


def test_splits_too_small_for_every_class_are_refused_at_submit() -> None:
    with pytest.raises(SpecError) as excinfo:
        check_source(DataSpec(source="sklearn:iris", validation_size=0.01))
    assert excinfo.value.problems == [
        "data.validation_size: 150 rows split into 118 train, 2 validation and 30 test rows; "
        "the validation part needs at least 3 (one per class, the split is stratified): "
        "give more data or change the fractions"
    ]
    with pytest.raises(SpecError, match=r"^data\.test_size: 150 rows split into"):
        check_source(DataSpec(source="sklearn:iris", test_size=0.01))
    check_source(DataSpec(source="sklearn:iris", validation_size=0.2))


def test_test_and_validation_fractions_must_leave_training_rows() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"leaves no rows to train on"):
        DataSpec(source="sklearn:iris", test_size=0.5, validation_size=0.5)
    with pytest.raises(ValidationError, match="validation_size"):
        DataSpec(source="sklearn:iris", validation_size=-0.1)
    assert DataSpec(source="sklearn:iris").validation_size == 0.0


def test_a_class_too_rare_for_three_parts_is_named(tmp_path: Path) -> None:
    rows = "\n".join(f"{i},{'b' if i < 2 else 'a'}" for i in range(40))
    path = _csv(tmp_path, "x,y\n" + rows + "\n")
    load_dataset(_spec(path))  # two parts: two rows of b are enough
    with pytest.raises(SpecError) as excinfo:
        load_dataset(_spec(path, validation_size=0.2))
    assert excinfo.value.problems == [
        "data.validation_size: cannot split 40 rows stratified into 3 parts: every class "
        "needs at least 3 rows (one per part); too few for 1 class(es): 'b' (2). Give more "
        "data or set validation_size: 0"
    ]
