"""Every built-in model type passes the conformance helper; gbdt's job never imports torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dcsched.kinds.train import DataSpec, TrainSpec
from dcsched.plugins.registry import load_plugin
from dcsched.plugins.testing import check_plugin

DIGITS = Path(__file__).resolve().parents[2] / "examples" / "digits.npz"


@pytest.mark.parametrize(
    ("name", "source", "params", "train", "validation_size"),
    [
        ("mlp", "sklearn:iris", {"hidden": [8]}, TrainSpec(epochs=3, batch_size=32, lr=0.01), 0.2),
        ("mlp", "sklearn:diabetes", {"hidden": [8]}, TrainSpec(epochs=2, lr=0.01), 0.0),
        ("gbdt", "sklearn:breast_cancer", {"trees_per_epoch": 5}, TrainSpec(epochs=3), 0.2),
        ("gbdt", "sklearn:diabetes", {"trees_per_epoch": 5}, TrainSpec(epochs=2), 0.0),
        ("cnn", f"npz:{DIGITS}", {"channels": [4, 8], "hidden": 16}, TrainSpec(epochs=2), 0.2),
    ],
)
def test_builtin_conforms(
    name: str,
    source: str,
    params: dict[str, object],
    train: TrainSpec,
    validation_size: float,
    tmp_path: Path,
) -> None:
    data = DataSpec(source=source, validation_size=validation_size)
    check_plugin(load_plugin(name), data, tmp_path, params=params, train=train)


def test_gbdt_refuses_images(tmp_path: Path) -> None:
    from dcsched.core.spec import SpecError

    with pytest.raises(SpecError, match="does not take npz data; it takes: sklearn, csv"):
        load_plugin("gbdt").check_data(DataSpec(source="npz:/x.npz"))


def test_a_gbdt_job_never_imports_torch_and_meets_its_bar(tmp_path: Path) -> None:
    spec = {
        "name": "gbdt-bc",
        "kind": "train",
        "team": "t",
        "model": {"type": "gbdt"},
        "data": {"source": "sklearn:breast_cancer", "test_size": 0.2, "seed": 42},
        "train": {"epochs": 5},
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    code = (
        "import sys\n"
        "from dcsched.training.runner import main\n"
        f"status = main([{str(tmp_path)!r}])\n"
        "print('TORCH', 'torch' in sys.modules, status)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=240, check=False
    )
    assert "TORCH False 0" in out.stdout, out.stdout + out.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["metrics"]["f1"] >= 0.95
    assert result["objective"] == {
        "name": "f1",
        "direction": "maximize",
        "value": result["metrics"]["f1"],
    }


def test_cnn_meets_its_bar_on_the_digits_example(tmp_path: Path) -> None:
    import numpy as np

    plugin = load_plugin("cnn")
    data = DataSpec(source=f"npz:{DIGITS}", test_size=0.2, seed=42)
    dataset = plugin.load_data(data)
    model = plugin.create(plugin.validate_params({}), dataset.info, "cpu")
    train = TrainSpec(epochs=15, batch_size=32, lr=0.002)
    model.fit(dataset, train, 42, lambda report: None, None)
    assert model.evaluate(dataset.x_test, dataset.y_test)["accuracy"] >= 0.95
    # Raw pixels (0..16) in, the saved scaler applied: the same labels as evaluation.
    with np.load(DIGITS) as arrays:
        raw = arrays["x"][:20].tolist()
    answers = model.predict(raw)
    scaled = (np.asarray(raw, dtype=np.float64) - dataset.preprocessing["mean"]) / (
        dataset.preprocessing["std"]
    )
    expected = np.argmax(model.predict_arrays(scaled[:, None]), axis=1)
    assert [a["label"] for a in answers] == [dataset.info.classes[i] for i in expected]


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": "zeros(3,8,8)"}, "lacks the arrays y.npy"),
        ({"x": "zeros(3,8)", "y": "zeros(3)"}, "x must be numeric images"),
        ({"x": "zeros(3,8,8)", "y": "zeros(4)"}, "y must have shape (3,)"),
        ({"x": "objects", "y": "zeros(1)"}, "no pickles"),
    ],
)
def test_bad_npz_is_refused_cheaply_without_quoting_it(
    tmp_path: Path, arrays: dict[str, str], message: str
) -> None:
    import numpy as np

    from dcsched.core.spec import SpecError

    made = {
        "zeros(3,8,8)": np.zeros((3, 8, 8)),
        "zeros(3,8)": np.zeros((3, 8)),
        "zeros(3)": np.zeros(3),
        "zeros(4)": np.zeros(4),
        "zeros(1)": np.zeros(1),
        "objects": np.array([{"secret": 1}], dtype=object),
    }
    path = tmp_path / "bad.npz"
    np.savez(path, **{key: made[value] for key, value in arrays.items()})
    with pytest.raises(SpecError) as excinfo:
        load_plugin("cnn").check_data(DataSpec(source=f"npz:{path}"))
    assert message in str(excinfo.value) and "secret" not in str(excinfo.value)


def test_not_an_npz_and_wrong_kind_for_cnn(tmp_path: Path) -> None:
    from dcsched.core.spec import SpecError

    text = tmp_path / "x.npz"
    text.write_text("password=hunter2\n")
    with pytest.raises(SpecError, match=r"not a readable \.npz") as excinfo:
        load_plugin("cnn").check_data(DataSpec(source=f"npz:{text}"))
    assert "hunter2" not in str(excinfo.value)
    with pytest.raises(SpecError, match="does not take sklearn data; it takes: npz"):
        load_plugin("cnn").check_data(DataSpec(source="sklearn:digits"))


def test_npz_and_text_sources_are_inputs_like_csv() -> None:
    from dcsched.inputs import input_fields, replace_inputs

    payload = {"data": {"source": "npz:images/digits.npz"}}
    assert input_fields("train", payload) == [("data.source", "images/digits.npz")]
    replaced = replace_inputs("train", payload, lambda field, ref: "upload:sha256:" + "0" * 64)
    assert replaced["data"]["source"] == "npz:upload:sha256:" + "0" * 64
    assert input_fields("train", {"data": {"source": "text:book.txt"}}) == [
        ("data.source", "book.txt")
    ]
    assert input_fields("train", {"data": {"source": "sklearn:iris"}}) == []


def test_images_split_into_disjoint_train_validation_and_test_parts(tmp_path: Path) -> None:
    import numpy as np

    from dcsched.core.spec import SpecError

    path = tmp_path / "images.npz"
    x = np.arange(60, dtype=np.float64)[:, None, None] * np.ones((60, 4, 4))  # image i is all i
    np.savez(path, x=x, y=np.arange(60) % 3)
    plugin = load_plugin("cnn")
    data = plugin.load_data(DataSpec(source=f"npz:{path}", validation_size=0.2, seed=1))
    assert data.x_val is not None and data.y_val is not None
    mean, std = data.preprocessing["mean"], data.preprocessing["std"]

    def ids(images: np.ndarray) -> set[int]:
        return {round(float(v)) for v in images[:, 0, 0, 0] * std + mean}

    train, validation, test = ids(data.x_train), ids(data.x_val), ids(data.x_test)
    assert (len(train), len(validation), len(test)) == (36, 12, 12)
    assert train | validation | test == set(range(60)) and not (validation & test)
    assert not (train & validation) and not (train & test)
    assert mean == pytest.approx(np.mean(sorted(train)))  # the training images only
    assert np.bincount(data.y_val).tolist() == [4, 4, 4]
    # Too few images for a validation part: refused at submit, from the npz header alone.
    with pytest.raises(SpecError) as excinfo:
        plugin.check_data(DataSpec(source=f"npz:{path}", validation_size=0.01))
    assert excinfo.value.problems == [
        "data.validation_size: 60 images split into 47 train, 1 validation and 12 test "
        "images; the validation part needs at least 2 (one per class, the split is "
        "stratified): give more data or change the fractions"
    ]
