"""``kind: tune`` specs: what the schema refuses, what only the plugin can refuse (through
the same check the server runs at submit), defaults from the plugin, and trial specs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dcsched.core.spec import SpecError
from dcsched.inputs import InputStore
from dcsched.kinds import TrainJobSpec, TuneJobSpec, document_of, parse_job_spec, split
from dcsched.kinds.tune import apply_params, effective_space, metric_of
from dcsched.plugins.registry import load_plugin
from dcsched.validation import check_runnable


def tune_spec(**tune: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "trials": 12,
        "parallel": 3,
        "search_space": {
            "params.hidden": {"choice": [[32], [64, 32]]},
            "train.lr": {"loguniform": [1e-4, 1e-1]},
            "train.batch_size": {"choice": [16, 32, 64]},
        },
    }
    settings.update(tune)
    return {
        "name": "mlp-tune",
        "kind": "tune",
        "team": "research",
        "resources": {"cpus": 1, "memory": "1GiB"},
        "model": {"type": "mlp"},
        "data": {"source": "sklearn:breast_cancer"},
        "train": {"epochs": 3},
        "tune": settings,
    }


def problems_of(document: dict[str, Any], tmp_path: Path) -> list[str]:
    """Every problem the server reports at submit (schema first, then the plugin's)."""
    try:
        spec = parse_job_spec(document)
    except SpecError as exc:
        return exc.problems
    inputs = InputStore(tmp_path, data_roots=list, max_upload=lambda: 1 << 20)
    return check_runnable(spec, inputs)


def test_the_issue_example_is_accepted_and_survives_the_store_round_trip(tmp_path: Path) -> None:
    document = tune_spec(metric="val_f1", mode="max", algorithm="tpe", pruner="asha", seed=1)
    assert problems_of(document, tmp_path) == []
    spec = parse_job_spec(document)
    request, kind, payload = split(spec)
    again = parse_job_spec(document_of(request, kind, payload))
    assert again == spec
    assert payload["tune"]["search_space"]["train.lr"] == {"loguniform": [1e-4, 1e-1]}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"search_space": {"params.hidden": {"choice": []}}}, "choice is empty"),
        ({"search_space": {"train.lr": {"uniform": [0.1, 0.01]}}}, "must be less than high"),
        ({"search_space": {"train.lr": {"uniform": [0.1, 0.1]}}}, "must be less than high"),
        ({"search_space": {"train.lr": {"loguniform": [0, 0.1]}}}, "loguniform needs low > 0"),
        ({"search_space": {"train.lr": {"int": [3, 1]}}}, "must be less than high"),
        ({"parallel": 13}, "parallel (13) is more than trials (12)"),
        ({"algorithm": "grid"}, "grid search needs discrete dimensions; train.lr"),
        ({"search_space": {"model.hidden": {"choice": [1]}}}, "params.NAME"),
        ({"search_space": {"train.lr": {"choice": [1], "int": [1, 2]}}}, "exactly one of"),
        ({"algorithm": "bayes"}, "tune.algorithm"),
        ({"trials": 0}, "tune.trials"),
    ],
)
def test_schema_refusals_name_the_field_and_the_fix(
    change: dict[str, Any], expected: str, tmp_path: Path
) -> None:
    problems = problems_of(tune_spec(**change), tmp_path)
    assert any(expected in p for p in problems), problems
    assert all(p.startswith("tune") for p in problems), problems


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"search_space": {"params.hiden": {"choice": [[8]]}}},
            "tune.search_space.params.hiden: unknown parameter of mlp; it takes: activation, "
            "dropout, hidden",
        ),
        (
            {"search_space": {"train.momentum": {"uniform": [0.1, 0.9]}}},
            "tune.search_space.train.momentum: unknown train setting; it takes: batch_size, "
            "epochs, lr, optimizer",
        ),
        (
            {"search_space": {"params.dropout": {"uniform": [0.0, 1.5]}}},
            "tune.search_space.params.dropout: the value 1.5 is refused",
        ),
        (
            {"search_space": {"train.batch_size": {"choice": [0, 32]}}},
            "tune.search_space.train.batch_size: the value 0 is refused",
        ),
        (
            {"metric": "val_auc"},
            "tune.metric: model type 'mlp' does not report 'val_auc' for binary data; it "
            "reports: accuracy, f1, log_loss, precision, recall",
        ),
        ({"metric": "r2"}, "does not report 'r2'"),
    ],
)
def test_plugin_refusals_at_submit(change: dict[str, Any], expected: str, tmp_path: Path) -> None:
    problems = problems_of(tune_spec(**change), tmp_path)
    assert any(expected in p for p in problems), problems


def test_the_grid_over_discrete_dimensions_is_accepted(tmp_path: Path) -> None:
    space = {"params.hidden": {"choice": [[8], [16]]}, "train.epochs": {"int": [1, 3]}}
    assert problems_of(tune_spec(algorithm="grid", search_space=space, trials=6), tmp_path) == []


def test_defaults_come_from_the_plugin(tmp_path: Path) -> None:
    document = tune_spec()
    del document["tune"]["search_space"]
    assert problems_of(document, tmp_path) == []
    spec = parse_job_spec(document)
    assert isinstance(spec, TuneJobSpec)
    plugin = load_plugin("mlp")
    space = effective_space(spec, plugin)
    assert sorted(space) == ["params.activation", "params.dropout", "params.hidden"]
    assert space["params.dropout"].uniform == (0.0, 0.5)
    assert metric_of(spec, plugin, "binary") == ("f1", "max")
    assert metric_of(spec, plugin, "regression") == ("r2", "max")
    minimised = parse_job_spec(tune_spec(metric="val_log_loss"))
    assert isinstance(minimised, TuneJobSpec)
    assert metric_of(minimised, plugin, "binary") == ("log_loss", "min")
    # The default search space of the plugin has a continuous dimension: no grid over it.
    document["tune"]["algorithm"] = "grid"
    problems = problems_of(document, tmp_path)
    assert any("grid search needs discrete dimensions" in p for p in problems), problems


def test_a_trial_spec_is_a_valid_train_spec() -> None:
    spec = parse_job_spec(tune_spec())
    document = document_of(*split(spec))
    document.pop("tune")
    document.update(kind="train", name="mlp-tune-trial-0")
    trial = parse_job_spec(
        apply_params(
            document, {"params.hidden": [64, 32], "train.lr": 0.01, "train.batch_size": 16}
        )
    )
    assert isinstance(trial, TrainJobSpec)
    assert trial.model.params == {"hidden": [64, 32]}
    assert (trial.train.lr, trial.train.batch_size, trial.train.epochs) == (0.01, 16, 3)


def test_the_example_study_is_accepted(tmp_path: Path) -> None:
    from dcsched.kinds import load_job_spec_yaml
    from tests.conftest import EXAMPLES

    spec = load_job_spec_yaml((EXAMPLES / "tune-mlp.yaml").read_text())
    inputs = InputStore(tmp_path, data_roots=list, max_upload=lambda: 1 << 20)
    assert isinstance(spec, TuneJobSpec) and check_runnable(spec, inputs) == []
    assert (spec.tune.trials, spec.tune.parallel) == (6, 2)


def test_a_study_holds_validation_rows_apart_from_its_test_rows(tmp_path: Path) -> None:
    spec = parse_job_spec(tune_spec())
    assert isinstance(spec, TuneJobSpec) and spec.data.validation_size == 0.2
    _, _, payload = split(spec)
    assert payload["data"]["validation_size"] == 0.2  # so each trial's train job has it
    no_validation = tune_spec()
    no_validation["data"] = {"source": "sklearn:breast_cancer", "validation_size": 0}
    assert problems_of(no_validation, tmp_path) == [
        "data.validation_size: a tune job prunes and picks its best trial on validation "
        "rows, apart from the test rows: give validation_size above 0 (default 0.2)"
    ]
    too_much = tune_spec()
    too_much["data"] = {"source": "sklearn:iris", "test_size": 0.5, "validation_size": 0.5}
    assert problems_of(too_much, tmp_path) == [
        "data: test_size (0.5) plus validation_size (0.5) leaves no rows to train on; their "
        "sum must be below 1"
    ]
    too_few = tune_spec()
    too_few["data"] = {"source": "sklearn:iris", "validation_size": 0.01}
    assert problems_of(too_few, tmp_path) == [
        "data.validation_size: 150 rows split into 118 train, 2 validation and 30 test rows; "
        "the validation part needs at least 3 (one per class, the split is stratified): "
        "give more data or change the fractions"
    ]
