"""Past usage for fair sharing: each team's resource-seconds, decayed with a half-life.

Under ``fair`` queueing a team that used much of the cluster recently yields to one that
did not. "Recently" is an exponential weight: usage ``half_life`` seconds ago counts half
as much as usage now, usage two half-lives ago a quarter, and so on.

Words:
- usage interval: a team held ``resources`` (a job's whole gang) from ``start`` to ``end``
  (``None``: still holding them). Times are unix seconds given by the caller; nothing here
  reads a clock.
- decayed usage: for each team and each resource, the exact integral

      U = sum over intervals of  r * integral from s to e of 2^(-(now - t) / H) dt
        = r * H / ln 2 * (2^(-(now - e) / H) - 2^(-(now - s) / H))

  with ``e = min(end, now)`` (``now`` for an open interval) and ``s = min(start, e)``;
  the parts of an interval after ``now`` do not count. Units are resource-seconds (CPU-
  seconds, GPU-seconds, byte-seconds). A team holding ``r`` forever has
  ``U = r * H / ln 2``, so ``U * ln 2 / H`` is its exponentially weighted average
  allocation; ``admission`` uses exactly that to normalise.

Invariants: the result is never negative, never exceeds the undecayed resource-seconds,
and is additive over intervals (splitting an interval in two gives the same total).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from dcsched.core.resources import Resources

_LN2 = math.log(2.0)


@dataclass(frozen=True, slots=True)
class UsageInterval:
    """``team`` held ``resources`` from ``start`` until ``end`` (``None``: still holds)."""

    team: str
    resources: Resources
    start: float
    end: float | None = None
    job_id: str = ""


def decay_weight(start: float, end: float, now: float, half_life: float) -> float:
    """The integral of ``2^(-(now - t) / half_life)`` over ``[start, end]`` (clipped to
    ``now``), in seconds: how much one unit held over that span counts at ``now``."""
    if half_life <= 0:
        raise ValueError(f"half_life must be positive, not {half_life!r}")
    end = min(end, now)
    start = min(start, end)
    if end <= start:
        return 0.0
    rate = _LN2 / half_life
    # H/ln2 * 2^(-(now-e)/H) * (1 - 2^(-(e-s)/H)); expm1 keeps short spans exact.
    return math.exp(-(now - end) * rate) * -math.expm1(-(end - start) * rate) / rate


def decayed_usage(
    intervals: Iterable[UsageInterval], now: float, half_life: float
) -> dict[str, Resources]:
    """Decayed resource-seconds per team at ``now`` (see the module docstring).

    Teams appear in the order their first interval appears; memory is rounded to whole
    byte-seconds.
    """
    if half_life <= 0:
        raise ValueError(f"half_life must be positive, not {half_life!r}")
    sums: dict[str, list[float]] = {}
    for interval in intervals:
        end = now if interval.end is None else interval.end
        weight = decay_weight(interval.start, end, now, half_life)
        acc = sums.setdefault(interval.team, [0.0, 0.0, 0.0])
        if weight == 0.0:
            continue
        acc[0] += interval.resources.cpus * weight
        acc[1] += interval.resources.gpus * weight
        acc[2] += interval.resources.memory * weight
    return {team: Resources(c, g, round(m)) for team, (c, g, m) in sums.items()}
