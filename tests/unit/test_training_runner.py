"""The training runner end to end: ``python -m dcsched.training.runner RUN_DIR`` and ``run``.

The straight 3-epoch run goes in a subprocess, started once for the module; the resumed
run goes in-process meanwhile (two cores), and both must end with identical metrics.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dcsched.kinds import parse_job_spec as parse_spec
from dcsched.training.runner import main, run

SPEC: dict[str, Any] = {
    "name": "mlp-breast-cancer",
    "kind": "train",
    "team": "research",
    "priority": "normal",
    "resources": {"workers": 1, "cpus": 1, "gpus": 0, "memory": "1GiB"},
    "model": {"type": "mlp", "params": {"hidden": [64, 32]}},
    "data": {"source": "sklearn:breast_cancer", "test_size": 0.2, "seed": 42},
    "train": {"epochs": 3, "batch_size": 32, "optimizer": "adam", "lr": 0.001},
}
RUNNER = [sys.executable, "-m", "dcsched.training.runner"]


def _spec(epochs: int = 3, **changes: Any) -> Any:
    document = json.loads(json.dumps(SPEC))
    document["train"]["epochs"] = epochs
    document.update(changes)
    return parse_spec(document)


def _write_spec(run_dir: Path, document: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "spec.json").write_text(json.dumps(document))


@dataclass
class Finished:
    run_dir: Path
    returncode: int
    stdout: str
    stderr: str

    @property
    def result(self) -> dict[str, Any]:
        return dict(json.loads((self.run_dir / "result.json").read_text()))


class StraightRun:
    """The subprocess run, started at once and waited for on first use."""

    def __init__(self, run_dir: Path):
        _write_spec(run_dir, _spec().model_dump(mode="json"))
        self.run_dir = run_dir
        self._process = subprocess.Popen(
            [*RUNNER, str(run_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self._finished: Finished | None = None

    def wait(self) -> Finished:
        if self._finished is None:
            stdout, stderr = self._process.communicate(timeout=120)
            self._finished = Finished(self.run_dir, self._process.returncode, stdout, stderr)
        return self._finished

    def kill(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StraightRun]:
    started = StraightRun(tmp_path_factory.mktemp("straight"))
    yield started
    started.kill()


def _progress(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "progress.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_resumed_run_completes_only_the_remaining_epochs(
    straight_run: StraightRun, tmp_path: Path
) -> None:
    first = run(_spec(epochs=2), tmp_path)
    assert first["epochs_run"] == 2
    assert [line["epoch"] for line in _progress(tmp_path)] == [1, 2]
    assert (tmp_path / "checkpoint" / "checkpoint.pt").is_file()

    resumed = run(_spec(epochs=3), tmp_path)
    assert resumed["epochs"] == 3 and resumed["epochs_run"] == 1
    assert [line["epoch"] for line in _progress(tmp_path)] == [1, 2, 3]

    # Resuming ends exactly where the uninterrupted subprocess run did.
    straight = straight_run.wait()
    assert straight.returncode == 0, straight.stderr
    assert resumed["metrics"] == straight.result["metrics"]

    # Without its checkpoint a run starts over, progress log included.
    shutil.rmtree(tmp_path / "checkpoint")
    again = run(_spec(epochs=1), tmp_path)
    assert again["epochs_run"] == 1
    assert [line["epoch"] for line in _progress(tmp_path)] == [1]


def test_runner_writes_result_progress_and_a_human_log(straight_run: StraightRun) -> None:
    finished = straight_run.wait()
    assert finished.returncode == 0, finished.stderr
    result = finished.result
    assert result["task"] == "binary"
    assert set(result["metrics"]) == {"accuracy", "precision", "recall", "f1", "log_loss"}
    assert result["metrics"]["accuracy"] > 0.9
    assert result["plugin"] == "mlp"
    assert result["params"] == {"hidden": [64, 32], "activation": "relu", "dropout": 0.0}
    assert (result["n_train"], result["n_test"], result["n_features"]) == (455, 114, 30)
    # validation_size 0 (a train job's default): the per-epoch metrics are on the test rows
    assert (result["n_validation"], result["validation_on"]) == (0, "test")
    assert result["classes"] == [0, 1]
    assert result["epochs"] == 3 and result["epochs_run"] == 3
    assert result["device"] == "cpu"
    assert 0 < result["train_seconds"] < 60

    progress = _progress(finished.run_dir)
    assert [line["epoch"] for line in progress] == [1, 2, 3]
    assert set(progress[0]) == {"epoch", "loss", "samples_per_s", "seconds", "at", "metrics"}
    assert "f1" in progress[-1]["metrics"]  # per-epoch validation metrics
    assert progress[2]["loss"] < progress[0]["loss"]
    assert not (finished.run_dir / "error.txt").exists()
    assert not list(finished.run_dir.rglob("*.tmp"))

    assert "455 train rows, 0 validation rows, 114 test rows" in finished.stdout
    assert "epoch 3/3 loss" in finished.stdout
    assert "test metrics: accuracy" in finished.stdout


def test_saved_model_reloads_and_predicts_identically(straight_run: StraightRun) -> None:
    from dcsched.plugins.mlp import MLPPlugin
    from dcsched.training.data import load_dataset
    from dcsched.training.evaluation import evaluate

    finished = straight_run.wait()
    assert finished.returncode == 0, finished.stderr
    model_dir = finished.run_dir / "model"
    data = load_dataset(_spec().data)
    model = MLPPlugin().load(model_dir, "cpu")
    predictions = model.predict_arrays(data.x_test)
    # Metrics from the reloaded model's predictions equal the run's to the last bit.
    assert evaluate(data.info, data.y_test, predictions) == finished.result["metrics"]
    assert np.array_equal(
        MLPPlugin().load(model_dir, "cpu").predict_arrays(data.x_test), predictions
    )
    assert finished.result["objective"]["name"] == "f1"
    # The saved model carries its scaler: raw, unscaled rows give the same answers.
    raw = data.x_test * data.scaler_scale + data.scaler_mean
    answers = model.predict([[float(v) for v in row] for row in raw])
    labels = [int(np.argmax(row)) for row in predictions]
    assert [answer["label"] for answer in answers] == labels

    preprocessing = json.loads((model_dir / "preprocessing.json").read_text())
    np.testing.assert_allclose(preprocessing["mean"], data.scaler_mean)
    np.testing.assert_allclose(preprocessing["scale"], data.scaler_scale)


def test_with_a_validation_split_epochs_are_scored_on_it_and_the_result_names_both(
    tmp_path: Path,
) -> None:
    from dcsched.plugins.mlp import MLPPlugin
    from dcsched.training.data import load_dataset

    data = {**SPEC["data"], "validation_size": 0.2}
    spec = _spec(epochs=2, data=data)
    result = run(spec, tmp_path)
    assert (result["n_train"], result["n_validation"], result["n_test"]) == (341, 114, 114)
    assert result["validation_on"] == "validation"
    names = {"accuracy", "precision", "recall", "f1", "log_loss"}
    assert set(result["metrics"]) == names | {f"val_{name}" for name in names}
    # The last epoch's report is the final model on the validation rows: the result's
    # val_ figures, recomputed here from the saved model; the unprefixed ones are the
    # test rows'.
    split = load_dataset(spec.data)
    assert split.x_val is not None and split.y_val is not None
    model = MLPPlugin().load(tmp_path / "model", "cpu")
    on_validation = model.evaluate(split.x_val, split.y_val)
    on_test = model.evaluate(split.x_test, split.y_test)
    last = _progress(tmp_path)[-1]["metrics"]
    assert last == pytest.approx(on_validation, rel=1e-6)
    assert {k: result["metrics"][f"val_{k}"] for k in names} == pytest.approx(on_validation)
    assert {k: result["metrics"][k] for k in names} == pytest.approx(on_test)
    assert last["log_loss"] != pytest.approx(on_test["log_loss"], rel=1e-3)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"model": None}, "model: Input should be a valid dictionary"),
        ({"model": {"type": "mlp", "params": {"hiden": [4]}}}, "model.params.hiden: unknown"),
        ({"data": {"source": "sklearn:mnist"}}, "data.source: unknown sklearn dataset 'mnist'"),
        ({"train": {"epochs": 0}}, "train.epochs: Input should be greater than or equal to 1"),
        (
            {
                "data": {"source": "sklearn:diabetes"},
                "train": {"epochs": 1, "optimizer": "sgd", "lr": 10},
            },
            "training diverged at epoch 1 (loss nan); try a smaller train.lr",
        ),
    ],
)
def test_a_bad_spec_fails_with_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict[str, Any], reason: str
) -> None:
    _write_spec(tmp_path, {**SPEC, **change})
    assert main([str(tmp_path)]) == 1
    error = (tmp_path / "error.txt").read_text()
    assert error.count("\n") == 1 and reason in error
    stderr = capsys.readouterr().err
    assert reason in stderr and "Traceback" not in stderr
    assert not (tmp_path / "result.json").exists()


def test_the_module_exits_1_on_an_unknown_plugin(tmp_path: Path) -> None:
    _write_spec(tmp_path, {**SPEC, "model": {"type": "xgboost"}})
    done = subprocess.run([*RUNNER, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    error = (tmp_path / "error.txt").read_text()
    assert "unknown model type 'xgboost'; installed model plugins: cnn, gbdt, mlp, tiny-lm" in error
    assert error.count("\n") == 1
    assert "unknown model type 'xgboost'" in done.stderr and "Traceback" not in done.stderr


def test_a_missing_spec_fails_and_bad_arguments_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tmp_path)]) == 1
    assert "spec.json does not exist" in (tmp_path / "error.txt").read_text()
    assert main([]) == 2
    assert "usage:" in capsys.readouterr().err


def test_two_data_parallel_workers_match_one_worker_at_the_same_global_batch(
    tmp_path: Path,
) -> None:
    """The gang launcher's environment (as torchrun's) makes the runner train with DDP:
    each rank takes its share of every global batch, rank 0 alone writes the run's files,
    and the model ends within a stated tolerance of the single-worker one."""
    import socket

    document = _spec(epochs=8).model_dump(mode="json")
    single_dir, gang_dir = tmp_path / "single", tmp_path / "gang"
    _write_spec(single_dir, document)
    _write_spec(gang_dir, document)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    ranks = [
        subprocess.Popen(
            [*RUNNER, str(gang_dir)],
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    single = subprocess.run([*RUNNER, str(single_dir)], capture_output=True, text=True, timeout=180)
    outputs = [rank.communicate(timeout=180)[0] for rank in ranks]
    assert single.returncode == 0, single.stderr
    assert [rank.returncode for rank in ranks] == [0, 0], outputs
    assert "rank 1 of 2" in outputs[1]
    one = json.loads((single_dir / "result.json").read_text())
    two = json.loads((gang_dir / "result.json").read_text())
    assert two["workers"] == 2 and one["workers"] == 1
    # Tolerance: same global batch and order, gradients averaged over two halves.
    print("f1 one worker", one["metrics"]["f1"], "two workers", two["metrics"]["f1"])
    assert abs(two["metrics"]["f1"] - one["metrics"]["f1"]) <= 0.03, (one, two)
    assert two["metrics"]["f1"] >= 0.93
    progress = (gang_dir / "progress.jsonl").read_text().splitlines()
    assert len(progress) == 8  # rank 0 alone reports
    losses = [json.loads(line)["loss"] for line in progress]
    single_losses = [
        json.loads(line)["loss"]
        for line in (single_dir / "progress.jsonl").read_text().splitlines()
    ]
    assert losses[-1] == pytest.approx(single_losses[-1], rel=0.15)
