"""Conformance checks for a model plugin: run ``check_plugin`` in your plugin's tests.

    from dcsched.kinds.train import DataSpec
    from dcsched.plugins.testing import check_plugin

    def test_my_plugin_conforms(tmp_path):
        check_plugin(MyPlugin(), DataSpec(source="sklearn:iris", validation_size=0.2), tmp_path)

It raises ``AssertionError`` naming the first broken promise of the API
(``dcsched.plugins.api``):
- declaration: ``api_version`` is this dcsched's, ``name``, ``description``, a params
  model that forbids extra fields, metric sets whose objective is one of their names
  with a direction, a search space over real params;
- params round-trip: the checked params, dumped to JSON and checked again, are equal;
- data: ``check_data`` accepts the spec, ``load_data`` gives a train and a test part,
  and a validation part exactly when ``data.validation_size`` > 0 (give one: that is
  what a tune job's trials get);
- training: ``fit``, given ``Dataset.for_fit()`` as the runner gives it, reports epochs
  1..N, each with the task's validation metrics, the last ones those ``evaluate`` gives
  on ``Dataset.validation`` (to 1e-6): the validation rows, never the test rows of a
  job that has validation rows;
- resume: a run stopped after epoch 1 and resumed from its checkpoint predicts exactly
  (to 1e-6) as an uninterrupted run, and reports only the remaining epochs;
- save/load: the loaded model predicts as the saved one, on arrays and on JSON inputs
  (``predict`` returns one JSON-serialisable value per input), and ``evaluate`` reports
  the metric set's names.
Small data and few epochs keep it fast; it uses the CPU.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dcsched.kinds.train import DataSpec, TrainSpec
from dcsched.plugins.api import API_VERSION, Dataset, EpochReport, ModelPlugin, TrainedModel


def check_plugin(
    plugin: ModelPlugin,
    data: DataSpec,
    tmp_path: Path,
    *,
    params: Mapping[str, Any] | None = None,
    train: TrainSpec | None = None,
    inputs: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Run every check; return the trained model's test metrics. ``inputs`` are raw
    inputs for ``predict`` (default: the first test rows as lists)."""
    train = train or TrainSpec(epochs=3, batch_size=32, lr=0.01)
    assert train.epochs >= 2, "check_plugin needs at least 2 epochs to test resuming"
    _check_declaration(plugin)
    checked = plugin.validate_params(dict(params or {}))
    again = plugin.validate_params(json.loads(json.dumps(checked.model_dump(mode="json"))))
    assert again == checked, f"params do not survive a JSON round trip: {checked} != {again}"

    plugin.check_data(data)
    dataset = plugin.load_data(data)
    assert dataset.n_train > 0 and dataset.n_test > 0, "load_data gave an empty part"
    if data.has_validation:
        assert dataset.n_val > 0, "validation_size > 0 but load_data gave no validation part"
    else:
        assert not dataset.has_validation, "validation_size is 0 but load_data gave a part"
    metric_set = plugin.metrics.get(dataset.info.task)
    assert metric_set is not None, f"{plugin.name} declares no metrics for {dataset.info.task}"

    reports: list[EpochReport] = []
    straight = _fit(plugin, checked, dataset, train, tmp_path / "straight", reports)
    assert [r.epoch for r in reports] == list(range(1, train.epochs + 1)), "epochs misnumbered"
    for report in reports:
        missing = set(metric_set.names) - set(report.metrics)
        assert not missing, f"epoch {report.epoch} report lacks validation metrics {missing}"
    on_validation = straight.evaluate(*dataset.validation)
    for name in metric_set.names:
        np.testing.assert_allclose(
            reports[-1].metrics[name],
            on_validation[name],
            rtol=1e-6,
            atol=1e-9,
            err_msg=f"the last epoch's {name} is not evaluate's on Dataset.validation",
        )

    stopped = train.model_copy(update={"epochs": 1})
    _fit(plugin, checked, dataset, stopped, tmp_path / "resumed", [])
    rest: list[EpochReport] = []
    resumed = _fit(plugin, checked, dataset, train, tmp_path / "resumed", rest)
    assert [r.epoch for r in rest] == list(range(2, train.epochs + 1)), "resume restarted"
    np.testing.assert_allclose(
        resumed.predict_arrays(dataset.x_test),
        straight.predict_arrays(dataset.x_test),
        rtol=1e-6,
        atol=1e-6,
        err_msg="a resumed run does not end where an uninterrupted one does",
    )

    straight.save(tmp_path / "model")
    loaded = plugin.load(tmp_path / "model", "cpu")
    assert loaded.info == straight.info, "load lost the dataset info"
    np.testing.assert_array_equal(
        loaded.predict_arrays(dataset.x_test),
        straight.predict_arrays(dataset.x_test),
        err_msg="the loaded model predicts otherwise than the saved one",
    )
    raw = list(inputs) if inputs is not None else dataset.x_test[:8].tolist()
    answers = straight.predict(raw)
    assert len(answers) == len(raw), "predict must answer once per input"
    json.dumps(answers)  # JSON-serialisable
    assert loaded.predict(raw) == answers, "the loaded model answers JSON inputs otherwise"
    assert isinstance(loaded.input_schema(), dict), "input_schema must be a JSON schema"
    metrics = loaded.evaluate(dataset.x_test, dataset.y_test)
    assert set(metric_set.names) <= set(metrics), f"evaluate lacks {metric_set.names}"
    return metrics


def _check_declaration(plugin: ModelPlugin) -> None:
    assert getattr(plugin, "api_version", None) == API_VERSION, f"api_version must be {API_VERSION}"
    assert plugin.name and plugin.description, "name and description are required"
    assert plugin.params_model.model_config.get("extra") == "forbid"
    assert plugin.data_sources, "declare the data sources the plugin takes"
    assert plugin.metrics, "declare the metrics, by task"
    for task, metric_set in plugin.metrics.items():
        assert metric_set.objective in metric_set.names, f"{task}: objective not a metric"
        assert metric_set.direction in ("maximize", "minimize"), f"{task}: no direction"
    unknown = set(plugin.search_space()) - set(plugin.params_model.model_fields)
    assert not unknown, f"search space names unknown params: {unknown}"
    json.dumps(plugin.describe())


def _fit(
    plugin: ModelPlugin,
    params: Any,
    dataset: Dataset,
    train: TrainSpec,
    checkpoint_dir: Path,
    reports: list[EpochReport],
) -> TrainedModel:
    model = plugin.create(params, dataset.info, "cpu")
    model.fit(dataset.for_fit(), train, 0, reports.append, checkpoint_dir)
    return model
