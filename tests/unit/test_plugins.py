"""Plugin discovery and loading (entry points faked, as pluggy's tests do) and the mlp plugin."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel, ConfigDict

from dcsched.kinds.train import TrainSpec
from dcsched.plugins.api import (
    CheckpointError,
    Dataset,
    DatasetInfo,
    EpochReport,
    ModelPlugin,
    PluginParamsError,
)
from dcsched.plugins.mlp import MLPParams, MLPPlugin
from dcsched.plugins.registry import (
    ENTRY_POINT_GROUP,
    DuplicatePluginError,
    PluginLoadError,
    PluginRecord,
    UnknownPluginError,
    describe_plugins,
    discover,
    load_plugin,
)

FAKE_MODULE = "dcsched_fake_models"
FAKE_SOURCE = """
from pydantic import BaseModel, ConfigDict
from dcsched.plugins.api import ModelPlugin

class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    depth: int = 3

class TreePlugin(ModelPlugin):
    api_version = 1
    name = "tree"
    description = "A fake tree model."
    params_model = Params
    def create(self, params, info, device):
        raise NotImplementedError
    def load(self, directory, device):
        raise NotImplementedError

class Misnamed(TreePlugin):
    name = "bush"

class Exploding(TreePlugin):
    def __init__(self):
        raise RuntimeError("no licence key")

class Ancient(TreePlugin):
    api_version = 0

not_a_plugin = 42
"""


def _entry_point(name: str, value: str, dist: str, version: str = "1.0") -> SimpleNamespace:
    return SimpleNamespace(
        name=name,
        value=value,
        group=ENTRY_POINT_GROUP,
        dist=SimpleNamespace(metadata={"Name": dist}, version=version),
    )


@pytest.fixture
def fake_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    (tmp_path / f"{FAKE_MODULE}.py").write_text(textwrap.dedent(FAKE_SOURCE))
    (tmp_path / "dcsched_broken_models.py").write_text("import a_module_that_is_not_there\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for module in (FAKE_MODULE, "dcsched_broken_models"):
        sys.modules.pop(module, None)


def _install(monkeypatch: pytest.MonkeyPatch, *entry_points: SimpleNamespace) -> None:
    def fake_entry_points(**params: Any) -> list[SimpleNamespace]:
        assert params == {"group": ENTRY_POINT_GROUP}
        return list(entry_points)

    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points)


# -- discovery and loading -----------------------------------------------------------------


def test_discover_returns_sorted_records_without_importing(
    fake_modules: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install(
        monkeypatch,
        _entry_point("tree", f"{FAKE_MODULE}:TreePlugin", "dcsched-trees", "2.1"),
        _entry_point("broken", "dcsched_broken_models:Plugin", "dcsched-broken"),
        _entry_point("mlp", "dcsched.plugins.mlp:MLPPlugin", "dcsched", "0.1.0"),
    )
    records = discover()
    assert [record.name for record in records] == ["broken", "mlp", "tree"]
    assert records[2] == PluginRecord("tree", f"{FAKE_MODULE}:TreePlugin", "dcsched-trees", "2.1")
    assert FAKE_MODULE not in sys.modules
    assert "dcsched_broken_models" not in sys.modules


def test_the_real_entry_point_finds_the_builtin_mlp() -> None:
    records = {record.name: record for record in discover()}
    assert records["mlp"].value == "dcsched.plugins.mlp:MLPPlugin"
    assert records["mlp"].distribution == "dcsched"
    assert isinstance(load_plugin("mlp"), MLPPlugin)


def test_load_plugin_returns_an_instance(
    fake_modules: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install(monkeypatch, _entry_point("tree", f"{FAKE_MODULE}:TreePlugin", "dcsched-trees"))
    plugin = load_plugin("tree")
    assert isinstance(plugin, ModelPlugin)
    assert plugin.name == "tree"
    assert plugin.validate_params({}).model_dump() == {"depth": 3}


def test_unknown_plugin_lists_installed_ones_and_says_how_to_install(
    fake_modules: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install(
        monkeypatch,
        _entry_point("tree", f"{FAKE_MODULE}:TreePlugin", "dcsched-trees"),
        _entry_point("mlp", "dcsched.plugins.mlp:MLPPlugin", "dcsched"),
    )
    with pytest.raises(UnknownPluginError) as excinfo:
        load_plugin("xgboost")
    message = str(excinfo.value)
    assert "'xgboost'" in message
    assert "installed model plugins: mlp, tree" in message
    assert "dcsched.models" in message and "pip install" in message
    assert isinstance(excinfo.value, LookupError)


def test_unknown_plugin_with_none_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    _install(monkeypatch)
    with pytest.raises(UnknownPluginError, match="installed model plugins: none"):
        load_plugin("mlp")


def test_import_failure_names_the_distribution(
    fake_modules: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install(monkeypatch, _entry_point("broken", "dcsched_broken_models:Plugin", "acme-models"))
    with pytest.raises(PluginLoadError) as excinfo:
        load_plugin("broken")
    assert excinfo.value.distribution == "acme-models"
    assert "acme-models 1.0" in str(excinfo.value)
    assert "a_module_that_is_not_there" in str(excinfo.value)
    assert isinstance(excinfo.value.__cause__, ModuleNotFoundError)


@pytest.mark.parametrize(
    ("attribute", "message"),
    [
        ("Exploding", "could not be created: RuntimeError: no licence key"),
        ("not_a_plugin", "is 42, not a ModelPlugin subclass"),
        ("Misnamed", "calls itself 'bush'"),
        ("Missing", "failed to import: AttributeError"),
        ("Ancient", "is for api_version 0, but this dcsched speaks plugin API version 1"),
    ],
)
def test_bad_plugin_objects_raise_plugin_load_error(
    fake_modules: None, monkeypatch: pytest.MonkeyPatch, attribute: str, message: str
) -> None:
    _install(monkeypatch, _entry_point("tree", f"{FAKE_MODULE}:{attribute}", "dcsched-trees"))
    with pytest.raises(PluginLoadError, match=message) as excinfo:
        load_plugin("tree")
    assert "dcsched-trees" in str(excinfo.value)


def test_duplicate_names_are_an_error_naming_both_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    _install(
        monkeypatch,
        _entry_point("mlp", "dcsched.plugins.mlp:MLPPlugin", "dcsched", "0.1.0"),
        _entry_point("mlp", "other.mlp:Plugin", "other-mlp", "3.0"),
    )
    with pytest.raises(DuplicatePluginError) as excinfo:
        discover()
    message = str(excinfo.value)
    assert "dcsched 0.1.0" in message and "other-mlp 3.0" in message


def test_the_same_entry_point_seen_twice_counts_once(monkeypatch: pytest.MonkeyPatch) -> None:
    mlp = _entry_point("mlp", "dcsched.plugins.mlp:MLPPlugin", "dcsched", "0.1.0")
    _install(monkeypatch, mlp, mlp)
    assert [record.name for record in discover()] == ["mlp"]


def test_describe_plugins_lists_schemas_and_broken_plugins(
    fake_modules: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install(
        monkeypatch,
        _entry_point("mlp", "dcsched.plugins.mlp:MLPPlugin", "dcsched", "0.1.0"),
        _entry_point("broken", "dcsched_broken_models:Plugin", "acme-models", "0.2"),
    )
    broken, mlp = describe_plugins()
    assert mlp["name"] == "mlp" and mlp["distribution"] == "dcsched"
    assert mlp["version"] == "0.1.0" and mlp["error"] is None
    assert "perceptron" in mlp["description"].lower()
    assert set(mlp["params_schema"]["properties"]) == {"hidden", "activation", "dropout"}
    assert mlp["params_schema"]["additionalProperties"] is False
    assert broken["name"] == "broken" and broken["params_schema"] is None
    assert "acme-models" in broken["error"]


def test_listing_plugins_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from dcsched.plugins.registry import describe_plugins\n"
        "names = [plugin['name'] for plugin in describe_plugins()]\n"
        "assert 'mlp' in names, names\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False"


# -- the plugin API ------------------------------------------------------------------------


def test_params_model_must_forbid_extra_fields() -> None:
    class Loose(BaseModel):
        model_config = ConfigDict(extra="ignore")

    with pytest.raises(TypeError, match="extra='forbid'"):

        class LoosePlugin(ModelPlugin):  # pragma: no cover - refused at definition
            name = "loose"
            description = ""
            params_model = Loose

            def create(self, params: Any, info: Any, device: str) -> Any: ...

            def load(self, directory: Path, device: str) -> Any: ...


def test_dataset_info_checks_its_class_count() -> None:
    with pytest.raises(ValueError, match="binary task has exactly 2 classes"):
        DatasetInfo("binary", 1, (0, 1, 2), ("x",))
    with pytest.raises(ValueError, match="feature names"):
        DatasetInfo("regression", 2, (), ("x",))
    info = DatasetInfo("multiclass", 1, ("a", "b", "c"), ("x",))
    assert DatasetInfo.from_json(info.to_json()) == info


# -- mlp parameters ------------------------------------------------------------------------


def test_mlp_params_defaults() -> None:
    params = MLPPlugin().validate_params({})
    assert params.model_dump() == {"hidden": [64, 32], "activation": "relu", "dropout": 0.0}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"hidden": []}, "model.params.hidden: List should have at least 1 item"),
        ({"hidden": [0]}, "model.params.hidden.0: Input should be greater than or equal to 1"),
        ({"hidden": [65537]}, "model.params.hidden.0: Input should be less than or equal to"),
        ({"hidden": [8] * 17}, "model.params.hidden: List should have at most 16 items"),
        ({"hidden": ["64"]}, "model.params.hidden.0: Input should be a valid integer"),
        ({"activation": "gelu"}, "model.params.activation: Input should be 'relu' or 'tanh'"),
        ({"dropout": 1.0}, "model.params.dropout: Input should be less than 1"),
        ({"dropout": -0.1}, "model.params.dropout: Input should be greater than or equal to 0"),
        (
            {"hiden": [8]},
            "model.params.hiden: unknown parameter of mlp; it takes: hidden, activation, dropout",
        ),
    ],
)
def test_mlp_params_errors_are_human_lines(params: dict[str, Any], expected: str) -> None:
    with pytest.raises(PluginParamsError) as excinfo:
        MLPPlugin().validate_params(params)
    assert isinstance(excinfo.value, ValueError)
    assert len(excinfo.value.problems) == 1
    assert excinfo.value.problems[0].startswith(expected), excinfo.value.problems


def test_mlp_params_report_every_problem() -> None:
    with pytest.raises(PluginParamsError) as excinfo:
        MLPPlugin().validate_params({"hidden": [0, 8, -1], "dropout": 2})
    paths = [line.split(":")[0] for line in excinfo.value.problems]
    assert paths == ["model.params.hidden.0", "model.params.hidden.2", "model.params.dropout"]


# -- mlp training --------------------------------------------------------------------------


def _toy(task: str, n: int = 96, seed: int = 0) -> tuple[DatasetInfo, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    names = ("a", "b", "c", "d")
    if task == "regression":
        y = (3 * x[:, 0] - x[:, 1] + 10).astype(np.float32)
        return DatasetInfo("regression", 4, (), names), x, y
    k = 2 if task == "binary" else 3
    y = np.digitize(x[:, 0] + 0.5 * x[:, 1], np.quantile(x[:, 0], np.linspace(0, 1, k + 1)[1:-1]))
    return DatasetInfo(task, 4, tuple(range(k)), names), x, y.astype(np.int64)  # type: ignore[arg-type]  # task is a str here


def _fit(
    info: DatasetInfo,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int = 4,
    seed: int = 0,
    checkpoint_dir: Path | None = None,
    params: dict[str, Any] | None = None,
    reports: list[EpochReport] | None = None,
) -> Any:
    plugin = MLPPlugin()
    model = plugin.create(plugin.validate_params(params or {"hidden": [16]}), info, "cpu")
    train = TrainSpec(epochs=epochs, batch_size=16, optimizer="adam", lr=0.01)
    sink = reports if reports is not None else []
    data = Dataset(x_train=x, y_train=y, x_test=x[:16], y_test=y[:16], info=info)
    model.fit(data, train, seed, sink.append, checkpoint_dir)
    return model


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_mlp_predictions_have_the_documented_shape(task: str) -> None:
    info, x, y = _toy(task)
    reports: list[EpochReport] = []
    model = _fit(info, x, y, epochs=3, reports=reports)
    assert [report.epoch for report in reports] == [1, 2, 3]
    assert all(report.loss > 0 and report.samples_per_s > 0 for report in reports)
    expected = MLPPlugin.metrics[task]
    assert set(reports[-1].metrics) == set(expected.names)  # validation metrics each epoch
    out = model.predict_arrays(x[:10])
    if task == "regression":
        assert out.shape == (10,)
    else:
        assert out.shape == (10, info.n_classes)
        np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-9)
        assert (out >= 0).all()


def test_mlp_learns_and_regression_loss_is_in_target_units() -> None:
    info, x, y = _toy("regression")
    reports: list[EpochReport] = []
    model = _fit(info, x, y, epochs=30, reports=reports)
    assert reports[-1].loss < reports[0].loss / 5
    mse = float(np.mean((model.predict_arrays(x) - y) ** 2))
    assert mse < float(np.var(y))
    # The first epoch's loss is that of near-random weights: about the target's variance.
    assert reports[0].loss > 0.3 * float(np.var(y))


def test_mlp_training_is_deterministic_for_a_seed_and_leaves_global_rng_alone() -> None:
    import torch

    info, x, y = _toy("multiclass")
    params = {"hidden": [16, 8], "dropout": 0.2}
    before = torch.get_rng_state()
    first = _fit(info, x, y, seed=5, params=params).predict_arrays(x)
    assert torch.equal(torch.get_rng_state(), before)
    second = _fit(info, x, y, seed=5, params=params).predict_arrays(x)
    other = _fit(info, x, y, seed=6, params=params).predict_arrays(x)
    assert np.array_equal(first, second)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("task", ["binary", "regression"])
def test_mlp_save_and_load_predict_identically(task: str, tmp_path: Path) -> None:
    info, x, y = _toy(task)
    model = _fit(info, x, y, params={"hidden": [8, 8], "activation": "tanh"})
    model.save(tmp_path / "model")
    loaded = MLPPlugin().load(tmp_path / "model", "cpu")
    assert loaded.info == info
    assert loaded.params == model.params
    assert np.array_equal(loaded.predict_arrays(x), model.predict_arrays(x))
    raw = [[float(v) for v in row] for row in x[:5]]
    assert loaded.predict(raw) == model.predict(raw)


def test_mlp_load_of_a_missing_model_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"model\.json is missing"):
        MLPPlugin().load(tmp_path, "cpu")


def test_mlp_resume_from_checkpoint_ends_where_a_straight_run_does(tmp_path: Path) -> None:
    info, x, y = _toy("binary")
    params = {"hidden": [16], "dropout": 0.3}
    straight = _fit(info, x, y, epochs=5, params=params).predict_arrays(x)

    checkpoint = tmp_path / "checkpoint"
    _fit(info, x, y, epochs=2, params=params, checkpoint_dir=checkpoint)
    assert (checkpoint / "checkpoint.pt").is_file()
    assert not list(checkpoint.glob("*.tmp"))
    reports: list[EpochReport] = []
    resumed = _fit(info, x, y, epochs=5, params=params, checkpoint_dir=checkpoint, reports=reports)
    assert [report.epoch for report in reports] == [3, 4, 5]
    assert np.array_equal(resumed.predict_arrays(x), straight)

    # A finished checkpoint trains no further.
    again: list[EpochReport] = []
    done = _fit(info, x, y, epochs=5, params=params, checkpoint_dir=checkpoint, reports=again)
    assert again == []
    assert np.array_equal(done.predict_arrays(x), straight)


def test_mlp_refuses_another_jobs_checkpoint(tmp_path: Path) -> None:
    info, x, y = _toy("binary")
    _fit(info, x, y, epochs=1, checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match="delete it to start over"):
        _fit(info, x, y, epochs=2, checkpoint_dir=tmp_path, params={"hidden": [32]})


def test_mlp_params_model_is_the_plugin_schema() -> None:
    assert MLPPlugin.params_model is MLPParams
    assert MLPPlugin().params_schema()["properties"]["hidden"]["default"] == [64, 32]


# -- broken plugins: listed, refused at submit, nothing crashes ------------------------------


def test_a_plugin_for_another_api_version_is_listed_broken_and_refused_at_submit(
    fake_modules: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from dcsched.inputs import InputStore
    from dcsched.kinds import parse_job_spec
    from dcsched.validation import check_runnable

    _install(
        monkeypatch,
        _entry_point("old-tree", f"{FAKE_MODULE}:Ancient", "acme-trees", "0.3"),
        _entry_point("gone", "dcsched_broken_models:Plugin", "acme-gone", "1.2"),
    )
    gone, old = describe_plugins()
    assert old["status"] == "broken" and "acme-trees 0.3" in old["error"]
    assert "api_version 0" in old["error"]
    assert gone["status"] == "broken" and "acme-gone 1.2" in gone["error"]
    assert "a_module_that_is_not_there" in gone["error"]

    store = InputStore(tmp_path, data_roots=list, max_upload=lambda: 1 << 20)
    for name, entry in (("old-tree", old), ("gone", gone)):
        spec = parse_job_spec(
            {
                "name": "j",
                "kind": "train",
                "team": "t",
                "model": {"type": name},
                "data": {"source": "sklearn:iris"},
            }
        )
        assert check_runnable(spec, store) == [f"model.type: {entry['error']}"]


def test_every_builtin_describes_itself() -> None:
    described = {entry["name"]: entry for entry in describe_plugins()}
    for name in ("mlp", "gbdt", "cnn", "tiny-lm"):
        entry = described[name]
        assert entry["status"] == "ok", entry["error"]
        assert entry["api_version"] == 1
        assert entry["data_sources"] and entry["metrics"] and entry["resources"]
        for metric_set in entry["metrics"].values():
            assert metric_set["direction"] in ("maximize", "minimize")


# -- the validation part -------------------------------------------------------------------


def test_a_dataset_built_without_validation_rows_validates_on_its_test_rows() -> None:
    info, x, y = _toy("binary")
    data = Dataset(x_train=x[16:], y_train=y[16:], x_test=x[:16], y_test=y[:16], info=info)
    assert not data.has_validation and data.n_val == 0
    assert data.validation[0] is data.x_test and data.validation[1] is data.y_test
    assert data.for_fit() is data


def test_fit_is_given_the_validation_rows_and_never_the_test_rows() -> None:
    info, x, y = _toy("binary")
    data = Dataset(
        x_train=x[32:],
        y_train=y[32:],
        x_test=x[:16],
        y_test=y[:16],
        info=info,
        x_val=x[16:32],
        y_val=y[16:32],
    )
    assert data.has_validation and data.n_val == 16
    assert data.validation[0] is data.x_val
    seen = data.for_fit()
    assert seen.x_test is data.x_val and seen.y_test is data.y_val  # a v1 plugin's x_test
    assert seen.validation[0] is data.x_val and seen.x_train is data.x_train
    with pytest.raises(ValueError, match="both x_val and y_val"):
        Dataset(x_train=x, y_train=y, x_test=x, y_test=y, info=info, x_val=x)
    with pytest.raises(ValueError, match="16 validation inputs but 8 targets"):
        Dataset(x_train=x, y_train=y, x_test=x, y_test=y, info=info, x_val=x[:16], y_val=y[:8])


def test_the_conformance_check_refuses_epochs_scored_off_the_validation_rows(
    tmp_path: Path,
) -> None:
    from dataclasses import replace

    from dcsched.kinds.train import DataSpec
    from dcsched.plugins.api import EpochCallback
    from dcsched.plugins.mlp import MLPModel
    from dcsched.plugins.testing import check_plugin

    class ScoredOnTrainingRows(MLPModel):
        def fit(
            self,
            data: Dataset,
            train: TrainSpec,
            seed: int,
            on_epoch: EpochCallback,
            checkpoint_dir: Path | None,
        ) -> None:
            def report(epoch: EpochReport) -> None:
                on_epoch(replace(epoch, metrics=self.evaluate(data.x_train, data.y_train)))

            super().fit(data, train, seed, report, checkpoint_dir)

    class Leaky(MLPPlugin):
        def create(self, params: BaseModel, info: DatasetInfo, device: str) -> MLPModel:
            return ScoredOnTrainingRows(MLPParams.model_validate(params.model_dump()), info, device)

    data = DataSpec(source="sklearn:iris", validation_size=0.2)
    params = {"hidden": [8]}
    check_plugin(MLPPlugin(), data, tmp_path / "good", params=params)
    with pytest.raises(AssertionError, match=r"is not evaluate's on Dataset\.validation"):
        check_plugin(Leaky(), data, tmp_path / "leaky", params=params)


def test_a_tabular_model_answers_through_the_preprocessing_it_holds_now() -> None:
    """TabularModel builds its scaler once per value of ``preprocessing``: predict and
    prepare use the one the model holds now (a new fit or load replaces it), not the
    first one they saw."""
    info, x, y = _toy("regression")
    model = _fit(info, x, y, epochs=1)
    rows = [[1.0, 2.0, 3.0, 4.0]]
    names = list(info.feature_names)
    model.preprocessing = {"feature_names": names, "mean": [0.0] * 4, "scale": [1.0] * 4}
    before = model.predict(rows)
    assert np.array_equal(model.prepare(np.array(rows)), np.array(rows, dtype=np.float32))
    model.preprocessing = {"feature_names": names, "mean": [1.0] * 4, "scale": [2.0] * 4}
    scaled = np.array([[0.0, 0.5, 1.0, 1.5]], dtype=np.float32)
    assert np.array_equal(model.prepare(np.array(rows)), scaled)
    assert model.predict(rows) == [float(v) for v in model.predict_arrays(scaled)] != before


@pytest.mark.parametrize("name", ["mlp", "gbdt", "cnn", "tiny-lm"])
def test_loading_what_is_not_a_saved_model_of_the_plugin_says_why(
    name: str, tmp_path: Path
) -> None:
    plugin = load_plugin(name)
    with pytest.raises(FileNotFoundError, match=r"model\.json is missing; is .* a saved"):
        plugin.load(tmp_path, "cpu")
    for file in ("model.json", "weights.pt", "model.pkl", "vocabulary.json", "preprocessing.json"):
        (tmp_path / file).write_text("{}")
    (tmp_path / "model.json").write_text('{"plugin": "other", "format": 1}')
    with pytest.raises(ValueError, match=f"holds a 'other' model of format 1; expected '{name}'"):
        plugin.load(tmp_path, "cpu")
    (tmp_path / "weights.pt").unlink()
    (tmp_path / "model.pkl").unlink()
    if name != "gbdt":
        with pytest.raises(FileNotFoundError, match=r"weights\.pt is missing"):
            plugin.load(tmp_path, "cpu")
