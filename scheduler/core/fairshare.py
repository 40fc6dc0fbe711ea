"""Past usage for fair sharing: each team's resource-seconds, decayed with a half-life.

Under ``fair`` queueing a team that used much of the cluster recently yields to one that
did not. "Recently" is an exponential weight: usage ``half_life`` seconds ago counts half
as much as usage now, usage two half-lives ago a quarter, and so on.

Words:
- allocation interval (``accounting.AllocationInterval``): a team held ``resources`` (a
  job's whole gang) from ``start`` to ``end`` (``None``: still holding them). Times are
  unix seconds given by the caller; nothing here reads a clock.
- decayed usage: for each team and each resource, the exact integral

      U = sum over intervals of  r * integral from s to e of 2^(-(now - t) / H) dt
        = r * H / ln 2 * (2^(-(now - e) / H) - 2^(-(now - s) / H))

  with ``e = min(end, now)`` (``now`` for an open interval) and ``s = min(start, e)``;
  the parts of an interval after ``now`` do not count. Units are resource-seconds (CPU-
  seconds, GPU-seconds, byte-seconds). A team holding ``r`` forever has
  ``U = r * H / ln 2``, so ``U * ln 2 / H`` is its exponentially weighted average
  allocation; ``fair_order`` uses exactly that to normalise.
- fair-order share (``fair_order``): a team's dominant share of the cluster, weighted
  and counting its decayed past usage as an allocation:

      fair_order_share(t) = max over r in {CPUs, GPUs, memory} with C_r > 0 of
                            (A_t,r + U_t,r * ln 2 / H) / C_r,   divided by weight(t)

  where C is the alive cluster's total, A the team's current allocation (its active
  jobs, plus the jobs ordered before it in this pass), U its decayed usage and H the
  half-life; so a team that held half the GPUs for the last few half-lives counts as
  holding half now.
- dominant share (the metric ``dcsched_team_dominant_share_ratio``): the raw number,
  ``max over r of A_t,r / C_r``: current allocation only, no weight, no past. A different
  number from the fair-order share; never call either by the other's name.

Invariants: the result is never negative, never exceeds the undecayed resource-seconds,
and is additive over intervals (splitting an interval in two gives the same total).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

from dcsched.core.accounting import AllocationInterval
from dcsched.core.resources import Resources

_LN2 = math.log(2.0)
_NONE = Resources()
T = TypeVar("T")


def decay_weight(start: float, end: float, now: float, half_life: float) -> float:
    """The integral of ``2^(-(now - t) / half_life)`` over ``[start, end]`` (clipped to
    ``now``), in seconds: how much one unit held over ``[start, end]`` counts at ``now``."""
    if half_life <= 0:
        raise ValueError(f"half_life must be positive, not {half_life!r}")
    end = min(end, now)
    start = min(start, end)
    if end <= start:
        return 0.0
    rate = _LN2 / half_life
    # H/ln2 * 2^(-(now-e)/H) * (1 - 2^(-(e-s)/H)); expm1 keeps short intervals exact.
    return math.exp(-(now - end) * rate) * -math.expm1(-(end - start) * rate) / rate


def decayed_usage(
    intervals: Iterable[AllocationInterval], now: float, half_life: float
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


def fair_order(
    queues: Mapping[str, Sequence[T]],
    allocation: Mapping[str, Sequence[float]],
    capacity: Resources,
    weights: Mapping[str, float],
    past_usage: Mapping[str, Resources],
    half_life: float,
    size: Callable[[T], Resources | None],
) -> list[T]:
    """The fair queue order: repeatedly the team with the lowest fair-order share (see the
    module docstring; ties by name) gives its next job, whose ``size`` is then added to
    the team's allocation (None: a job that takes nothing, added without changing it).

    ``queues``: each team's jobs in its own order; ``allocation``: CPUs, GPUs and memory
    each team holds now; ``weights``: each team's weight."""
    if len(queues) == 1:  # one team: its own order, whatever the shares
        (queue,) = queues.values()
        return list(queue)
    caps = [(i, float(c)) for i, c in enumerate((capacity.cpus, capacity.gpus, capacity.memory))]
    caps = [(i, c) for i, c in caps if c > 0]
    scale = _LN2 / half_life
    # Each team's shares before each of its jobs depend on its own jobs only, so they are
    # computed team by team; then the order is the heap merge of the teams' sequences by
    # (share, team): repeatedly the team whose next share is the lowest. Shares only grow
    # when sizes are not negative; then that merge is a plain sort.
    sequences: list[list[tuple[float, str, int, T]]] = []
    monotone = True
    for team, queue in queues.items():
        a = list(allocation.get(team, (0.0, 0.0, 0.0)))
        past = past_usage.get(team, _NONE)
        a[0] += past.cpus * scale
        a[1] += past.gpus * scale
        a[2] += past.memory * scale
        weight = weights[team]
        sequence: list[tuple[float, str, int, T]] = []
        last = -math.inf
        if len(caps) == 3:  # every resource counts: the loop below, unrolled
            (_, c0), (_, c1), (_, c2) = caps
            a0, a1, a2 = a
            for k, item in enumerate(queue):
                share = a0 / c0
                x = a1 / c1
                if x > share:
                    share = x
                x = a2 / c2
                if x > share:
                    share = x
                share /= weight
                if share < last:
                    monotone = False
                last = share
                sequence.append((share, team, k, item))
                taken = size(item)
                if taken is not None:
                    a0 += taken.cpus
                    a1 += taken.gpus
                    a2 += taken.memory
        else:
            for k, item in enumerate(queue):
                # max((a[i] / c for i, c in caps), default=0.0) / weight
                share = max([a[i] / c for i, c in caps], default=0.0) / weight
                if share < last:
                    monotone = False
                last = share
                sequence.append((share, team, k, item))
                taken = size(item)
                if taken is not None:
                    a[0] += taken.cpus
                    a[1] += taken.gpus
                    a[2] += taken.memory
        sequences.append(sequence)
    if monotone:
        merged = [entry for sequence in sequences for entry in sequence]
        merged.sort()  # (share, team, k) is unique: items are never compared
        return [entry[3] for entry in merged]
    return [entry[3] for entry in heapq.merge(*sequences)]
