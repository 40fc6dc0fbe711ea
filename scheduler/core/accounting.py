"""Accounting of allocated resources: how many GPU-seconds, CPU-seconds and byte-seconds
each job and each team was given, over any window of time.

Words:
- allocated: reserved for the job (from its admission, when its placement group is
  created, to its end or requeue), whether or not it used it. Measured use comes from the
  exporters; joining the two is the point of having both.
- allocation interval (``AllocationInterval``): one such stretch of time. A preempted job
  that ran twice has two; the store derives them from each job's event history.
- resource-seconds: a ``Resources`` value whose components are CPU-seconds, GPU-seconds
  and byte-seconds: the whole gang's request (workers x per-worker) times the interval.

Invariants: results are never negative, grow with ``now`` and are additive over
intervals. Times are unix seconds given by the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from dcsched.core.resources import Resources


@dataclass(frozen=True, slots=True)
class AllocationInterval:
    """``team`` held ``resources`` (job ``job_id``'s whole gang) from ``start`` until
    ``end`` (``None``: still holds them)."""

    team: str
    resources: Resources
    start: float
    end: float | None = None
    job_id: str = ""


def interval_seconds(interval: AllocationInterval, now: float, since: float | None = None) -> float:
    """Seconds of the interval that fall in ``[since, now]``."""
    end = now if interval.end is None else min(interval.end, now)
    start = interval.start if since is None else max(interval.start, since)
    return max(0.0, end - start)


def allocated(interval: AllocationInterval, now: float, since: float | None = None) -> Resources:
    """Resource-seconds of the interval within ``[since, now]``."""
    seconds = interval_seconds(interval, now, since)
    r = interval.resources
    return Resources(r.cpus * seconds, r.gpus * seconds, round(r.memory * seconds))


def by_job(
    intervals: Iterable[AllocationInterval], now: float, since: float | None = None
) -> dict[str, Resources]:
    """Resource-seconds per job id, in order of first appearance."""
    sums: dict[str, Resources] = {}
    for interval in intervals:
        sums[interval.job_id] = sums.get(interval.job_id, Resources()) + allocated(
            interval, now, since
        )
    return sums


def by_team(
    intervals: Iterable[AllocationInterval], now: float, since: float | None = None
) -> dict[str, Resources]:
    """Resource-seconds per team, in order of first appearance."""
    sums: dict[str, Resources] = {}
    for interval in intervals:
        sums[interval.team] = sums.get(interval.team, Resources()) + allocated(interval, now, since)
    return sums


class RunningTotals:
    """Resource-seconds per team since the beginning, kept up to date cheaply: intervals
    that ended more than ``settle_s`` before a call are summed once and remembered, so
    each call needs only the intervals that were open or ended since the previous call's
    horizon (``intervals_since(horizon)``: every interval ending at or after it, open ones
    included).

    ``settle_s`` bounds how late an interval may be recorded and still be counted: a store
    that writes each interval's end as it happens needs seconds, not minutes. Not
    thread-safe: callers serialise calls.
    """

    def __init__(self, settle_s: float = 300.0):
        self.settle_s = settle_s
        self._horizon: float | None = None
        self._settled: dict[str, Resources] = {}

    def totals(
        self, intervals_since: Callable[[float | None], Iterable[AllocationInterval]], now: float
    ) -> dict[str, Resources]:
        horizon = now - self.settle_s
        current: dict[str, Resources] = {}
        for interval in intervals_since(self._horizon):
            end = interval.end
            if end is not None and self._horizon is not None and end < self._horizon:
                continue  # settled by an earlier call
            target = self._settled if end is not None and end < horizon else current
            target[interval.team] = target.get(interval.team, Resources()) + allocated(
                interval, now
            )
        self._horizon = horizon
        out = dict(self._settled)
        for team, total in current.items():
            out[team] = out.get(team, Resources()) + total
        return out
