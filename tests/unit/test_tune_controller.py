"""The tuning controller on a real SQLite store and a real Optuna journal, with a
scripted executor (no Ray): trials are train jobs admitted under the quota, at most
``parallel`` unfinished, pruned ones stopped at once, the budget never exceeded across
restarts and crash windows, one model registered for the study, cancel stops every trial."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dcsched.adapters.sqlite_store import SQLiteStore
from dcsched.core.lifecycle import JobState
from dcsched.paths import Paths
from dcsched.ports import RunPhase
from dcsched.service import SchedulerService, ServiceSettings
from dcsched.tuning.controller import TuneController, trial_job_id
from dcsched.tuning.study import Study
from tests.unit.test_service import Clocks, Cluster, Executor

CONFIG = """
teams:
  - name: research
    quota: {cpus: 2, memory: 8GiB}
"""


def tune_spec(trials: int = 6, parallel: int = 3, pruner: str = "none") -> dict[str, Any]:
    return {
        "name": "study",
        "kind": "tune",
        "team": "research",
        "resources": {"cpus": 1, "memory": "1GiB"},
        "model": {"type": "mlp"},
        "data": {"source": "sklearn:breast_cancer"},
        "train": {"epochs": 3},
        "tune": {
            "trials": trials,
            "parallel": parallel,
            "algorithm": "random",
            "pruner": pruner,
            "seed": 7,
            "search_space": {
                "params.hidden": {"choice": [[8], [16, 8]]},
                "train.lr": {"loguniform": [1e-3, 1e-1]},
            },
        },
    }


class World:
    def __init__(self, home: Path) -> None:
        self.home, self.executor, self.cluster, self.clocks = home, Executor(), Cluster(), Clocks()
        self.start()

    def start(self) -> None:
        """A (re)started server: a new service and controller on the same home."""
        paths = Paths(self.home)
        self.service = SchedulerService(
            store=SQLiteStore(paths.db, paths.models),
            executor=self.executor,
            cluster=self.cluster,
            paths=paths,
            check_runnable=lambda _: [],
            clock=self.clocks,
            settings=ServiceSettings(sweep_interval_s=5.0),
            monotonic=self.clocks.monotonic,
        )
        self.service.apply_config(CONFIG)
        self.tuning = TuneController(self.service, self.home)
        self.service.drivers.append(self.tuning)

    def tick(self, n: int = 1) -> None:
        for _ in range(n):
            self.clocks.wall += 1
            self.clocks.mono += 10  # past every release credit
            self.service.tick()

    def trials(self, tune_id: str) -> list[Any]:
        return [j for j in self.service.store.list_jobs() if j.id.startswith(tune_id + "-trial-")]

    def holding(self, tune_id: str) -> list[Any]:
        return [j for j in self.trials(tune_id) if j.state.holds_resources()]

    def end(
        self, job_id: str, values: list[float], succeed: bool = True, test: float | None = None
    ) -> None:
        """The trial's run writes its epochs (validation f1) and, if it succeeds, its
        result (validation ``val_f1``, the last epoch's, and test ``f1``, by default
        ``1 - val_f1``: ranking trials by it would pick the worst) and model."""
        self.write_epochs(job_id, values)
        files = self.service.run_files(job_id)
        if succeed:
            test = 1.0 - values[-1] if test is None else test
            metrics = {"f1": test, "val_f1": values[-1]}
            files.write_result({"metrics": metrics, "plugin": "mlp", "params": {}})
            files.model.mkdir(parents=True, exist_ok=True)
            (files.model / "weights.bin").write_bytes(job_id.encode())
        job = self.service.store.get_job(job_id)
        assert job is not None
        self.executor.phase[job.run_id] = RunPhase.SUCCEEDED if succeed else RunPhase.FAILED

    def write_epochs(self, job_id: str, values: list[float]) -> None:
        files = self.service.run_files(job_id)
        files.path.mkdir(parents=True, exist_ok=True)
        lines = [{"epoch": i + 1, "loss": 1.0, "metrics": {"f1": v}} for i, v in enumerate(values)]
        files.progress.write_text("".join(json.dumps(line) + "\n" for line in lines))


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_trials_are_train_jobs_under_the_quota_and_the_best_model_is_registered_once(
    world: World,
) -> None:
    tune = world.service.submit(tune_spec(trials=6, parallel=3))
    world.tick(2)
    assert world.service.store.get_job(tune.id).state is JobState.RUNNING
    trials = world.trials(tune.id)
    assert len(trials) == 3  # parallel
    assert {t.kind for t in trials} == {"train"}
    assert {t.team for t in trials} == {"research"}
    assert len(world.holding(tune.id)) == 2  # the quota holds two trials of one CPU each
    # The tune job reserves nothing and counts as no usage.
    assert world.service.teams_view()[0]["running"] == 2
    assert all(i.job_id != tune.id for i in world.service.allocations())
    value = 0.5
    seen_max = 0
    while world.service.store.get_job(tune.id).state is JobState.RUNNING:
        for job in world.holding(tune.id):
            if job.state is JobState.RUNNING:
                value += 0.05
                world.end(job.id, [value - 0.1, value - 0.05, value])
        world.tick(2)
        seen_max = max(seen_max, len(world.holding(tune.id)))
        assert len([t for t in world.trials(tune.id) if not t.state.is_terminal()]) <= 3
    assert seen_max <= 2
    done = world.service.store.get_job(tune.id)
    assert done.state is JobState.SUCCEEDED
    assert len(world.trials(tune.id)) == 6
    # One model: the study's, from its best trial; no trial registered one of its own.
    names = [name for name, *_ in world.service.store.model_names()]
    assert names == ["study"]
    version = world.service.store.model_versions("study")[0]
    # chosen on its validation f1 (the best); registered with its test f1 beside it
    assert version.metrics == {"f1": pytest.approx(1 - value), "val_f1": pytest.approx(value)}
    summary = world.tuning.summary(done)
    assert summary is not None
    assert (summary["done"], summary["running"], summary["total"]) == (6, 0, 6)
    assert summary["best"]["value"] == pytest.approx(value)
    assert done.result is not None and done.result["best_job"].startswith(tune.id + "-trial-")
    rows = world.tuning.trials(done)
    assert rows is not None and sorted(r["number"] for r in rows) == list(range(6))
    assert all(
        r["epochs"]
        == {
            "1": pytest.approx(r["value"] - 0.1),
            "2": pytest.approx(r["value"] - 0.05),
            "3": pytest.approx(r["value"]),
        }
        for r in rows
    )


def test_the_best_trial_is_chosen_on_validation_figures_never_on_test_ones(
    world: World,
) -> None:
    tune = world.service.submit(tune_spec(trials=2, parallel=2))
    world.tick(2)
    first, second = world.trials(tune.id)
    # Trial jobs hold validation rows apart from the test rows (a tune job's default).
    assert first.payload["data"]["validation_size"] == 0.2
    # first: better on validation, worse on test; the study must prefer it.
    world.end(first.id, [0.7, 0.9], test=0.80)
    world.end(second.id, [0.6, 0.8], test=0.99)
    world.tick(3)
    done = world.service.store.get_job(tune.id)
    assert done.state is JobState.SUCCEEDED
    assert done.result is not None and done.result["best_job"] == first.id
    summary = world.tuning.summary(done)
    assert summary is not None and summary["best"]["value"] == pytest.approx(0.9)
    version = world.service.store.model_versions("study")[0]
    assert version.metrics == {"f1": pytest.approx(0.80), "val_f1": pytest.approx(0.9)}


def test_a_trial_whose_result_has_no_validation_figure_fails_rather_than_use_test_rows(
    world: World,
) -> None:
    tune = world.service.submit(tune_spec(trials=1, parallel=1))
    world.tick(2)
    (trial,) = world.trials(tune.id)
    world.end(trial.id, [0.9])
    files = world.service.run_files(trial.id)
    files.write_result({"metrics": {"f1": 0.9}, "plugin": "mlp", "params": {}})  # test only
    world.tick(3)
    assert world.service.store.get_job(tune.id).state is JobState.FAILED


def test_a_restart_and_a_crash_between_ask_and_create_never_exceed_the_budget(
    world: World,
) -> None:
    tune = world.service.submit(tune_spec(trials=5, parallel=2))
    world.tick(2)
    first = world.trials(tune.id)
    assert len(first) == 2
    world.end(first[0].id, [0.6, 0.7, 0.8])
    # Crash 1: the server dies before the controller saw that run end.
    world.start()
    world.tick(2)
    # Crash 2: Optuna handed out a trial but the server died before creating its job.
    study = world.tuning.study_of(world.service.store.get_job(tune.id))
    assert study is not None
    orphan = study.ask()
    world.start()
    world.tick(2)
    assert world.service.store.get_job(trial_job_id(tune.id, orphan.number)) is not None
    for _ in range(20):
        for job in world.holding(tune.id):
            if job.state is JobState.RUNNING:
                world.end(job.id, [0.5, 0.6, 0.7])
        world.tick(2)
        if world.service.store.get_job(tune.id).state.is_terminal():
            break
    assert world.service.store.get_job(tune.id).state is JobState.SUCCEEDED
    numbers = sorted(int(j.id.rsplit("-", 1)[1]) for j in world.trials(tune.id))
    assert numbers == [0, 1, 2, 3, 4]
    assert len(world.tuning.study_of(world.service.store.get_job(tune.id)).trials()) == 5


def test_a_pruned_trial_is_stopped_and_released_at_once(world: World) -> None:
    tune = world.service.submit(tune_spec(trials=4, parallel=2, pruner="median"))
    world.tick(2)
    a, b = world.trials(tune.id)[:2]
    world.end(a.id, [0.9, 0.92, 0.95])
    world.tick(2)
    c = next(j for j in world.trials(tune.id) if j.id not in (a.id, b.id))
    world.end(b.id, [0.88, 0.9, 0.93])
    world.tick(2)
    # A poor trial is pruned at its first poor epoch: its job cancelled, resources freed.
    assert world.service.store.get_job(c.id).state is JobState.RUNNING
    world.write_epochs(c.id, [0.2, 0.2])
    world.tick()
    pruned = world.service.store.get_job(c.id)
    assert pruned.state is JobState.CANCELLED
    assert pruned.reason is not None and pruned.reason.startswith("pruned by the tuner at epoch 1")
    assert ("stop", c.run_id) in world.executor.calls and (
        "release",
        c.run_id,
    ) in world.executor.calls
    rows = {r["number"]: r for r in world.tuning.trials(world.service.store.get_job(tune.id))}
    row = rows[int(c.id.rsplit("-", 1)[1])]
    assert (row["state"], row["pruned_at_epoch"]) == ("PRUNED", 1)


def test_a_run_that_has_trained_every_epoch_is_not_pruned_but_completes(world: World) -> None:
    tune = world.service.submit(tune_spec(trials=4, parallel=2, pruner="median"))
    world.tick(2)
    a, b = world.trials(tune.id)[:2]
    world.end(a.id, [0.9, 0.92, 0.95])
    world.end(b.id, [0.88, 0.9, 0.93])
    world.tick(2)
    c = next(j for j in world.trials(tune.id) if j.id not in (a.id, b.id))
    world.tick()
    assert world.service.store.get_job(c.id).state is JobState.RUNNING
    # Poor from its first epoch, but the pass sees all 3 epochs at once: nothing to stop.
    world.write_epochs(c.id, [0.2, 0.2, 0.2])
    world.tick()
    assert world.service.store.get_job(c.id).state is JobState.RUNNING
    assert ("stop", c.run_id) not in world.executor.calls
    world.end(c.id, [0.2, 0.2, 0.2])
    world.tick()
    assert world.service.store.get_job(c.id).state is JobState.SUCCEEDED
    rows = {r["number"]: r for r in world.tuning.trials(world.service.store.get_job(tune.id))}
    row = rows[int(c.id.rsplit("-", 1)[1])]
    assert (row["state"], row["value"], row["pruned_at_epoch"]) == ("COMPLETE", 0.2, None)


def test_cancelling_the_tune_job_stops_every_trial(world: World) -> None:
    tune = world.service.submit(tune_spec(trials=6, parallel=3))
    world.tick(2)
    assert len(world.trials(tune.id)) == 3
    world.service.cancel(tune.id)
    assert {t.state for t in world.trials(tune.id)} == {JobState.CANCELLED}
    world.tick(3)
    assert len(world.trials(tune.id)) == 3  # no new trial after the cancel
    summary = world.tuning.summary(world.service.store.get_job(tune.id))
    assert summary is not None and (summary["running"], summary["failed"]) == (0, 3)


def test_a_study_without_a_completed_trial_fails_with_a_reason(world: World) -> None:
    tune = world.service.submit(tune_spec(trials=2, parallel=2))
    world.tick(2)
    for job in world.trials(tune.id):
        world.end(job.id, [0.1], succeed=False)
    world.tick(3)
    failed = world.service.store.get_job(tune.id)
    assert failed.state is JobState.FAILED
    assert failed.reason == "no trial completed; see `dcsched trials`"
    assert world.service.store.model_names() == []


def test_the_study_journal_is_under_the_home(world: World, tmp_path: Path) -> None:
    tune = world.service.submit(tune_spec(trials=2, parallel=1))
    world.tick()
    journal = tmp_path / "tuning" / f"{tune.id}.journal"
    assert journal.is_file() and journal.stat().st_size > 0
    assert isinstance(world.tuning.study_of(world.service.store.get_job(tune.id)), Study)


def test_a_reopened_study_does_not_replay_the_draws_of_its_first_trials(tmp_path: Path) -> None:
    """A restarted server opens the study again: its sampler must not start over from the
    seed (it would propose the first trials' values again), yet one seed still gives one
    study from the start."""
    from dcsched.kinds.tune import Dimension, TuneSettings

    settings = TuneSettings(trials=10, algorithm="random", seed=1)
    space = {"train.lr": Dimension(loguniform=(1e-4, 1e-1))}

    def study(name: str) -> Study:
        return Study(tmp_path / f"{name}.journal", name, settings, space, "max", 3)

    first = study("a")
    drawn = [first.ask().params["train.lr"] for _ in range(3)]
    reopened = study("a")  # the same journal, as after a restart
    assert reopened.ask().params["train.lr"] not in drawn
    assert study("b").ask().params["train.lr"] == drawn[0]
