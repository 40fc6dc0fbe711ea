"""What the simulator knows between events without asking a policy: each team's decayed
past usage (for ``fair``) and its jobs' predicted run times (for backfill).

- ``DecayedUsage`` keeps, per team, exactly the integral that ``core.fairshare`` defines
  (usage ``H`` seconds ago counts half), updated at each start and end instead of being
  summed over every interval at each pass: finished intervals as one decayed sum, and
  running ones as two sums from which their integral up to any later time follows. The
  live service drops intervals that ended more than ten half-lives ago (they weigh less
  than 1/1000); this keeps them.
- ``RuntimePredictor``: no oracle. A job's estimated run time is a quantile (default the
  median) of the run times of its team's jobs that have already ended, among those with
  the same number of GPUs when there are at least ``min_samples`` of them, else among
  all the team's; None before the team has ``min_samples`` ended jobs (such a job is not
  backfilled, as a live job without max_runtime is not).
"""

from __future__ import annotations

import math
from bisect import insort

from dcsched.core.resources import EPSILON, Resources

_LN2 = math.log(2.0)


class DecayedUsage:
    """Per team, decayed resource-seconds (CPU, GPU, memory) as ``fairshare`` defines."""

    def __init__(self, half_life: float) -> None:
        if half_life <= 0:
            raise ValueError(f"half_life must be positive, not {half_life!r}")
        self.rate = _LN2 / half_life
        self.at = 0.0
        # Per team, per component: ended (decayed to ``at``); running: sum of r and sum of
        # r * exp(-rate * (at - start)).
        self._ended: dict[str, list[float]] = {}
        self._raw: dict[str, list[float]] = {}
        self._weighted: dict[str, list[float]] = {}
        self._teams: list[str] = []  # sorted(self._ended), kept while no team is added

    def _rebase(self, now: float) -> None:
        if now == self.at:
            return
        factor = math.exp(-self.rate * (now - self.at))
        for sums in (self._ended, self._weighted):
            for values in sums.values():
                values[0] *= factor
                values[1] *= factor
                values[2] *= factor
        self.at = now

    def start(self, team: str, held: Resources, now: float) -> None:
        self._rebase(now)
        raw = self._raw.setdefault(team, [0.0, 0.0, 0.0])
        weighted = self._weighted.setdefault(team, [0.0, 0.0, 0.0])
        self._ended.setdefault(team, [0.0, 0.0, 0.0])
        for i, r in enumerate((held.cpus, held.gpus, float(held.memory))):
            raw[i] += r
            weighted[i] += r

    def stop(self, team: str, held: Resources, started: float, now: float) -> None:
        self._rebase(now)
        w = math.exp(-self.rate * (now - started))
        raw, weighted, ended = self._raw[team], self._weighted[team], self._ended[team]
        for i, r in enumerate((held.cpus, held.gpus, float(held.memory))):
            raw[i] -= r
            weighted[i] = max(0.0, weighted[i] - r * w)
            if abs(raw[i]) < EPSILON:
                raw[i], weighted[i] = 0.0, 0.0
            ended[i] += r * (1.0 - w) / self.rate

    def usage(self, now: float) -> dict[str, Resources]:
        self._rebase(now)
        out = {}
        rate = self.rate
        if len(self._teams) != len(self._ended):
            self._teams = sorted(self._ended)
        for team in self._teams:
            e, raw, w = self._ended[team], self._raw[team], self._weighted[team]
            out[team] = Resources(
                e[0] + max(0.0, raw[0] - w[0]) / rate,
                e[1] + max(0.0, raw[1] - w[1]) / rate,
                round(e[2] + max(0.0, raw[2] - w[2]) / rate),
            )
        return out


class RuntimePredictor:
    """Run-time estimates learned from each team's ended jobs (see the module doc)."""

    def __init__(self, quantile: float = 0.5, min_samples: int = 5) -> None:
        if not 0 < quantile <= 1:
            raise ValueError(f"quantile must be in (0, 1], not {quantile!r}")
        self.quantile = quantile
        self.min_samples = max(1, min_samples)
        self._by_team: dict[str, list[float]] = {}
        self._by_shape: dict[tuple[str, float], list[float]] = {}

    def observe(self, team: str, gpus: float, seconds: float) -> None:
        insort(self._by_team.setdefault(team, []), seconds)
        insort(self._by_shape.setdefault((team, gpus), []), seconds)

    def estimate(self, team: str, gpus: float) -> float | None:
        for samples in (self._by_shape.get((team, gpus)), self._by_team.get(team)):
            if samples is not None and len(samples) >= self.min_samples:
                return samples[min(len(samples) - 1, int(self.quantile * len(samples)))]
        return None
