"""The Optuna side of a tune job: its study, sampler, pruner and trial records.

One study per tune job, named by the job id, in a journal file the server owns
(``$DCSCHED_HOME/tuning/JOB.journal``: Optuna's ``JournalStorage`` with a file backend,
no database server). Only the server writes it (one server per home, see
dcsched.processes), so the file lock is an in-process one: a ``kill -9`` never leaves a
stale lock file behind. Optuna is imported here and nowhere on the CLI's path.
"""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.storages.journal._file import BaseJournalFileLock
from optuna.trial import FrozenTrial, TrialState

from dcsched.kinds.tune import Dimension, TuneSettings

optuna.logging.set_verbosity(optuna.logging.WARNING)


class _ThreadLock(BaseJournalFileLock):
    """The journal's lock within this process (the server is the file's only writer)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def acquire(self) -> bool:
        self._lock.acquire()
        return True

    def release(self) -> None:
        self._lock.release()


def structured(dimension: Dimension) -> bool:
    """Whether a choice dimension has list or mapping values (``hidden: [64, 32]``): Optuna
    keeps only scalars, so those choices are stored as their JSON text."""
    return dimension.choice is not None and any(
        isinstance(v, list | dict) for v in dimension.choice
    )


def encode(dimension: Dimension, value: Any) -> Any:
    return json.dumps(value, separators=(",", ":")) if structured(dimension) else value


def decode(dimension: Dimension | None, value: Any) -> Any:
    if dimension is not None and structured(dimension) and isinstance(value, str):
        return json.loads(value)
    return value


def distribution(dimension: Dimension) -> BaseDistribution:
    if dimension.choice is not None:
        return CategoricalDistribution([encode(dimension, v) for v in dimension.choice])
    if dimension.integer is not None:
        return IntDistribution(dimension.integer[0], dimension.integer[1])
    if dimension.loguniform is not None:
        return FloatDistribution(dimension.loguniform[0], dimension.loguniform[1], log=True)
    assert dimension.uniform is not None
    return FloatDistribution(dimension.uniform[0], dimension.uniform[1])


def sampler(
    settings: TuneSettings, space: Mapping[str, Dimension], seed_offset: int = 0
) -> optuna.samplers.BaseSampler:
    """The study's sampler. ``seed_offset``: the trials the study already has when it is
    opened again (a restarted server), so that the sampler does not replay the random
    draws it made for the first trials (the same seed gives the same study from start)."""
    seed = settings.seed + seed_offset
    if settings.algorithm == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if settings.algorithm == "grid":
        grid = {path: [encode(d, v) for v in d.grid()] for path, d in space.items()}
        return optuna.samplers.GridSampler(grid, seed=seed)
    if settings.algorithm == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if settings.algorithm == "hyperopt":
        with warnings.catch_warnings():  # deprecated in Optuna 4.9; the settings stand
            warnings.simplefilter("ignore", FutureWarning)
            parameters = optuna.samplers.TPESampler.hyperopt_parameters()
        return optuna.samplers.TPESampler(seed=seed, **parameters)
    return optuna.samplers.TPESampler(seed=seed)


def pruner(settings: TuneSettings, epochs: int) -> optuna.pruners.BasePruner:
    if settings.pruner == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if settings.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=epochs, reduction_factor=3
        )
    if settings.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    return optuna.pruners.NopPruner()


class Study:
    """One tune job's study: ask for a trial's values, report epochs, tell the end."""

    def __init__(
        self,
        path: Path,
        name: str,
        settings: TuneSettings,
        space: Mapping[str, Dimension],
        mode: str,
        epochs: int,
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        storage = JournalStorage(JournalFileBackend(str(path), lock_obj=_ThreadLock()))
        self.dimensions = dict(space)
        self.space = {p: distribution(d) for p, d in space.items()}
        self.study = optuna.create_study(
            study_name=name,
            storage=storage,
            sampler=sampler(settings, space),
            pruner=pruner(settings, epochs),
            direction="maximize" if mode == "max" else "minimize",
            load_if_exists=True,
        )
        existing = len(self.study.get_trials(deepcopy=False))
        if existing:
            self.study.sampler = sampler(settings, space, seed_offset=existing)
        self._live: dict[int, optuna.trial.Trial] = {}
        self.lock = threading.RLock()

    def trials(self) -> list[FrozenTrial]:
        with self.lock:
            return self.study.get_trials(deepcopy=False)

    def ask(self) -> FrozenTrial:
        with self.lock:
            trial = self.study.ask(dict(self.space))
            self._live[trial.number] = trial
            return self.study.trials[trial.number]

    def values(self, trial: FrozenTrial) -> dict[str, Any]:
        """A trial's values by path, JSON-shaped (structured choices decoded)."""
        return {
            path: decode(self.dimensions.get(path), value) for path, value in trial.params.items()
        }

    def _trial(self, frozen: FrozenTrial) -> optuna.trial.Trial:
        trial = self._live.get(frozen.number)
        if trial is None:  # asked before a restart
            trial = optuna.trial.Trial(self.study, frozen._trial_id)
            self._live[frozen.number] = trial
        return trial

    def report(self, frozen: FrozenTrial, step: int, value: float) -> bool:
        """Record an epoch's value; return whether the pruner stops the trial here."""
        with self.lock:
            trial = self._trial(frozen)
            if step not in frozen.intermediate_values:
                trial.report(value, step)
            return bool(trial.should_prune())

    def tell(self, frozen: FrozenTrial, state: TrialState, value: float | None = None) -> None:
        with self.lock:
            if state is TrialState.COMPLETE:
                self.study.tell(frozen.number, value)
            else:
                self.study.tell(frozen.number, state=state)
            self._live.pop(frozen.number, None)

    def best(self) -> FrozenTrial | None:
        with self.lock:
            done = [t for t in self.trials() if t.state is TrialState.COMPLETE]
            return self.study.best_trial if done else None
