"""The tuning controller: drives each ``kind: tune`` job's study, one step per pass.

A tune job holds no resources. Its trials are ``train`` jobs with the ids
``<tune job id>-trial-<N>`` (N: Optuna's trial number, from 0), the tune job's team,
priority and per-trial resources, admitted by the normal admission path, so quota,
priority, placement and preemption apply to them unchanged.

Each pass (``step``, called by the service under its lock, before admission):
1. a PENDING tune job becomes RUNNING (it waits for nothing itself);
2. for each unfinished Optuna trial: create its job if a crash came between ``ask`` and
   the job's creation; report the epochs its run wrote to progress.jsonl since the last
   pass and stop it at once if the pruner says so (the job is cancelled with a reason
   beginning ``pruned``, which frees its resources); tell Optuna how an ended job ended
   (a succeeded one with its result's ``val_METRIC``);
3. ask for new trials while fewer than ``parallel`` are unfinished and fewer than
   ``trials`` exist (Optuna numbers them in its storage, so never more, never twice);
4. once every trial has ended, register the best trial's model as the tune job's model
   (one version, with its params and metrics) and the tune job succeeds.

No test row is looked at before step 4: a trial's job has ``data.validation_size`` > 0
(``TuneDataSpec``), so the epochs reported to the pruner and the value told when it ends
are on its validation rows; its test metrics (``NAME`` beside ``val_NAME`` in the result)
are recorded, and registered for the best trial, but never compared.

Everything is read back from the store and the study each pass, so a server killed at
any point resumes where it was: finished trials are kept, a trial's job still in the
durable queue carries on (a preempted one resumes from its checkpoint).
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial, TrialState

from dcsched.core.job import Job
from dcsched.core.lifecycle import JobState
from dcsched.kinds import document_of, parse_job_spec, split
from dcsched.kinds.train import VALIDATION_PREFIX
from dcsched.kinds.tune import (
    TRIAL_ID,
    TuneJobSpec,
    apply_params,
    effective_space,
    metric_of,
    trial_job_id,
    trial_name,
)
from dcsched.ports import ModelNameTaken
from dcsched.rundir import RunDir, tail_lines
from dcsched.tuning.study import Study

if TYPE_CHECKING:
    from dcsched.service import SchedulerService

logger = logging.getLogger(__name__)

PRUNED = "pruned"
"""How the reason of a pruned trial's job begins."""


class TuneController:
    """Plugged into the service (``SchedulerService.drivers``); see the module docstring."""

    def __init__(self, service: SchedulerService, home: Path):
        self.service = service
        self.store = service.store
        self.folder = home / "tuning"
        self._studies: dict[str, tuple[Study, TuneJobSpec, str, str]] = {}
        self._lock = threading.RLock()

    # -- what the service asks -------------------------------------------------------------

    def owns(self, job: Job) -> bool:
        """Whether ``job`` is a trial of a tune job (its model is not registered alone)."""
        match = TRIAL_ID.match(job.id)
        if match is None or job.kind != "train":
            return False
        parent = self.store.get_job(match.group("parent"))
        return parent is not None and parent.kind == "tune"

    def cancelled(self, job: Job) -> None:
        """A tune job was cancelled: stop every trial, and close its study."""
        if job.kind != "tune":
            return
        for child in self._children(job, unfinished=True):
            self.service.cancel(child.id, f"its tune job {job.id} was cancelled")
        study = self._open(job)
        if study is not None:
            for trial in study[0].trials():
                if trial.state is TrialState.RUNNING:
                    study[0].tell(trial, TrialState.FAIL)

    def step(self) -> None:
        active = (JobState.PENDING, JobState.ADMITTED, JobState.RUNNING)
        for job in self.store.list_jobs(states=active):
            if job.kind != "tune":
                continue
            try:
                self._drive(job)
            except Exception:
                logger.exception("could not drive tune job %s; retrying next pass", job.id)

    # -- reading ---------------------------------------------------------------------------

    def summary(self, job: Job) -> dict[str, Any] | None:
        """Trials by state, the best value and params so far (None for other kinds)."""
        opened = self._open(job)
        if opened is None:
            return None
        study, spec, metric, mode = opened
        trials = study.trials()
        counts = Counter(_state_name(t) for t in trials)
        best = study.best()
        return {
            "metric": f"{VALIDATION_PREFIX}{metric}",  # every figure here is a validation one
            "mode": mode,
            "total": spec.tune.trials,
            "parallel": spec.tune.parallel,
            "created": len(trials),
            "done": counts.get("COMPLETE", 0),
            "running": counts.get("RUNNING", 0),
            "pruned": counts.get("PRUNED", 0),
            "failed": counts.get("FAIL", 0),
            "best": None
            if best is None
            else {"trial": best.number, "value": best.value, "params": study.values(best)},
        }

    def trials(self, job: Job) -> list[dict[str, Any]] | None:
        """Every trial: number, params, state, metric per epoch, pruned at, node, duration."""
        opened = self._open(job)
        if opened is None:
            return None
        study = opened[0]
        rows = []
        for trial in study.trials():
            child = self.store.get_job(trial_job_id(job.id, trial.number))
            duration = None
            if child is not None and child.started_at is not None:
                end = child.finished_at or self.service.now()
                duration = round(end - child.started_at, 3)
            pruned_at = None
            if trial.state is TrialState.PRUNED and trial.intermediate_values:
                pruned_at = max(trial.intermediate_values)
            rows.append(
                {
                    "number": trial.number,
                    "job": trial_job_id(job.id, trial.number),
                    "state": _state_name(trial),
                    "job_state": child.state.value if child else None,
                    "params": study.values(trial),
                    "value": trial.value,
                    "epochs": {str(k): v for k, v in sorted(trial.intermediate_values.items())},
                    "pruned_at_epoch": pruned_at,
                    "nodes": list(child.nodes) if child else [],
                    "attempts": child.attempt if child else 0,
                    "duration_s": duration,
                }
            )
        return rows

    def study_of(self, job: Job) -> Study | None:
        opened = self._open(job)
        return opened[0] if opened else None

    # -- driving ---------------------------------------------------------------------------

    def _open(self, job: Job) -> tuple[Study, TuneJobSpec, str, str] | None:
        if job.kind != "tune":
            return None
        with self._lock:
            opened = self._studies.get(job.id)
            if opened is None:
                from dcsched.plugins.registry import load_plugin
                from dcsched.training.data import SKLEARN_DATASETS

                spec = parse_job_spec(document_of(job.request, job.kind, dict(job.payload)))
                assert isinstance(spec, TuneJobSpec)
                plugin = load_plugin(spec.model.type)
                task = None
                if spec.data.scheme == "sklearn":
                    task = SKLEARN_DATASETS.get(spec.data.location)
                metric, mode = metric_of(spec, plugin, task)
                study = Study(
                    self.folder / f"{job.id}.journal",
                    job.id,
                    spec.tune,
                    effective_space(spec, plugin),
                    mode,
                    spec.train.epochs,
                )
                opened = (study, spec, metric, mode)
                self._studies[job.id] = opened
            return opened

    def _drive(self, job: Job) -> None:
        now = self.service.now()
        if job.state is JobState.PENDING:
            job = self.store.transition(job.id, JobState.ADMITTED, now, None, nodes=())
        if job.state is JobState.ADMITTED:
            job = self.store.transition(job.id, JobState.RUNNING, now, None)
        opened = self._open(job)
        assert opened is not None
        study, spec, metric, _ = opened
        trials = study.trials()
        unfinished = 0
        for trial in trials:
            if trial.state is TrialState.RUNNING and not self._follow(job, study, trial, metric):
                unfinished += 1
        created = len(trials)
        while created < spec.tune.trials and unfinished < spec.tune.parallel:
            trial = study.ask()
            self._create_trial_job(job, study, trial)
            created += 1
            unfinished += 1
        if created >= spec.tune.trials and unfinished == 0:
            self._finish(job, study, metric)

    def _follow(self, job: Job, study: Study, trial: FrozenTrial, metric: str) -> bool:
        """Report a running trial's new epochs, prune it, or tell how it ended; return
        whether it has ended."""
        child = self.store.get_job(trial_job_id(job.id, trial.number))
        if child is None:  # the server died between ask and the job's creation
            self._create_trial_job(job, study, trial)
            return False
        files = self.service.run_files(child.id)
        if child.state is JobState.SUCCEEDED:
            name = f"{VALIDATION_PREFIX}{metric}"  # never the test rows' figure
            value = ((child.result or {}).get("metrics") or {}).get(name)
            if isinstance(value, int | float):
                self._report_epochs(study, trial, files, metric)
                study.tell(trial, TrialState.COMPLETE, float(value))
            else:
                logger.warning("trial %s ended without metric %s", child.id, name)
                study.tell(trial, TrialState.FAIL)
            return True
        if child.state is JobState.CANCELLED and (child.reason or "").startswith(PRUNED):
            study.tell(trial, TrialState.PRUNED)
            return True
        if child.state.is_terminal():
            study.tell(trial, TrialState.FAIL)
            return True
        if child.state is JobState.RUNNING:
            epochs = int((child.payload.get("train") or {}).get("epochs", 0))
            epoch = self._report_epochs(study, trial, files, metric, last=epochs)
            if epoch is not None:
                self.service.cancel(
                    child.id, f"{PRUNED} by the tuner at epoch {epoch} ({metric} too low)"
                )
                study.tell(trial, TrialState.PRUNED)
                logger.info("pruned trial %s at epoch %s", child.id, epoch)
                return True
        return False

    def _report_epochs(
        self, study: Study, trial: FrozenTrial, files: RunDir, metric: str, last: int = 0
    ) -> int | None:
        """Report every epoch not yet reported; the epoch at which to prune, if any. Never
        the ``last``, nor any once the run has written its last epoch: a trial that has
        trained all its epochs is let finish (stopping it would save nothing and cost a
        Ray Job stop, seconds during which this pass holds the loop)."""
        epochs: list[tuple[int, float]] = []
        for line in tail_lines(files.progress):
            try:
                entry = json.loads(line)
                epochs.append((int(entry["epoch"]), float(entry["metrics"][metric])))
            except (ValueError, KeyError, TypeError):
                continue
        trained = last > 0 and any(epoch >= last for epoch, _ in epochs)
        for epoch, value in epochs:
            if epoch in trial.intermediate_values:
                continue
            if study.report(trial, epoch, value) and epoch < last and not trained:
                return epoch
        return None

    def _create_trial_job(self, job: Job, study: Study, trial: FrozenTrial) -> None:
        child_id = trial_job_id(job.id, trial.number)
        if self.store.get_job(child_id) is not None:
            return
        # parsed, not the stored payload as is: defaults (the validation split) included
        stored = document_of(job.request, job.kind, dict(job.payload))
        document = parse_job_spec(stored).model_dump(mode="json", by_alias=True)
        document.pop("tune", None)
        document.update(kind="train", name=trial_name(job.name, trial.number))
        spec = parse_job_spec(apply_params(document, study.values(trial)))
        request, kind, payload = split(spec)
        child = Job(
            id=child_id,
            request=request,
            state=JobState.PENDING,
            submitted_at=self.service.now(),
            kind=kind,
            payload=payload,
        )
        self.store.add_job(child)
        self.service.events.submitted(child)
        logger.info("tune job %s: trial %s is job %s", job.id, trial.number, child_id)

    def _children(self, job: Job, unfinished: bool) -> list[Job]:
        opened = self._open(job)
        total = opened[1].tune.trials if opened else 0
        children = []
        for number in range(total):
            child = self.store.get_job(trial_job_id(job.id, number))
            if child is not None and not (unfinished and child.state.is_terminal()):
                children.append(child)
        return children

    def _finish(self, job: Job, study: Study, metric: str) -> None:
        now = self.service.now()
        summary = self.summary(job) or {}
        best = study.best()
        if best is None:
            job = self.store.transition(
                job.id, JobState.FAILED, now, "no trial completed; see `dcsched trials`"
            )
            self.service.events.finished(job, None)
            return
        child_id = trial_job_id(job.id, best.number)
        files = self.service.run_files(child_id)
        child = self.store.get_job(child_id)
        child_result = (child.result if child else None) or files.read_result() or {}
        result = {
            **{k: v for k, v in child_result.items() if k != "model"},
            "tuning": summary,
            "best_trial": best.number,
            "best_job": child_id,
        }
        try:
            self.store.finish_with_model(
                job.id,
                now,
                files.model,
                metrics=child_result.get("metrics", {}),
                plugin=str(child_result.get("plugin", "")),
                params={**child_result.get("params", {}), "tuned": study.values(best)},
                result=result,
            )
        except (ModelNameTaken, OSError) as exc:
            job = self.store.transition(job.id, JobState.FAILED, now, str(exc))
            self.service.events.finished(job, None)
            return
        logger.info(
            "tune job %s done; best trial %s (%s %s)", job.id, best.number, metric, best.value
        )
        finished = self.store.get_job(job.id)
        if finished is not None:
            self.service.events.finished(finished, None)


def _state_name(trial: FrozenTrial) -> str:
    return str(trial.state.name)
