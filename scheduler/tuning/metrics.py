"""Tuning series for ``/metrics``, read at scrape time from each running study.

- dcsched_tune_trials{job_id,team,state}   gauge, trials of a tune job by Optuna state
                                           (COMPLETE, RUNNING, PRUNED, FAIL) and WAITING:
                                           the budget not yet asked for
- dcsched_tune_best_value{job_id,team,metric}  gauge, the best value so far

Per-job series exist only while the tune job runs (job ids never pile up as labels).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from dcsched.core.lifecycle import JobState
from dcsched.tuning.controller import TuneController

logger = logging.getLogger(__name__)

STATES = ("COMPLETE", "RUNNING", "PRUNED", "FAIL", "WAITING")


class TuneCollector(Collector):
    def __init__(self, controller: TuneController):
        self._controller = controller

    def collect(self) -> Iterator[GaugeMetricFamily]:
        trials = GaugeMetricFamily(
            "dcsched_tune_trials",
            "Trials of a running tune job by state (WAITING: not yet started)",
            labels=["job_id", "team", "state"],
        )
        best = GaugeMetricFamily(
            "dcsched_tune_best_value",
            "Best value of the tuned metric so far",
            labels=["job_id", "team", "metric"],
        )
        store = self._controller.store
        for job in store.list_jobs(states=[JobState.ADMITTED, JobState.RUNNING]):
            if job.kind != "tune":
                continue
            try:
                summary = self._controller.summary(job)
            except Exception:  # a scrape never fails for one study
                logger.exception("cannot read the study of %s", job.id)
                continue
            if summary is None:
                continue
            counts = {
                "COMPLETE": summary["done"],
                "RUNNING": summary["running"],
                "PRUNED": summary["pruned"],
                "FAIL": summary["failed"],
                "WAITING": max(0, summary["total"] - summary["created"]),
            }
            for state in STATES:
                trials.add_metric([job.id, job.team, state], float(counts[state]))
            if summary["best"] is not None:
                best.add_metric([job.id, job.team, summary["metric"]], summary["best"]["value"])
        yield trials
        yield best
