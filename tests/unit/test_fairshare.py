"""Decayed usage for fair sharing, and accounting of allocated resource-seconds."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dcsched.core.accounting import (
    AllocationInterval,
    RunningTotals,
    allocated,
    by_job,
    by_team,
    interval_seconds,
)
from dcsched.core.fairshare import decay_weight, decayed_usage, fair_order
from dcsched.core.resources import Resources

GiB = 1024**3
H = 3600.0


def numeric(rate: float, start: float, end: float, now: float, half_life: float) -> float:
    """Midpoint rule with many steps: the integral the closed form must match."""
    steps = 20_000
    width = (end - start) / steps
    return sum(
        rate * 2 ** (-(now - (start + (k + 0.5) * width)) / half_life) * width for k in range(steps)
    )


def test_closed_interval_is_the_exact_integral() -> None:
    usage = decayed_usage([AllocationInterval("a", Resources(2, 4, GiB), 1000, 5000)], 9000, H)
    assert usage["a"].gpus == pytest.approx(numeric(4, 1000, 5000, 9000, H), rel=1e-7)
    assert usage["a"].cpus == pytest.approx(numeric(2, 1000, 5000, 9000, H), rel=1e-7)
    assert usage["a"].memory == pytest.approx(numeric(GiB, 1000, 5000, 9000, H), rel=1e-7)


def test_open_interval_ends_now_and_the_future_does_not_count() -> None:
    open_ = decayed_usage([AllocationInterval("a", Resources(gpus=1), 0, None)], 100, H)
    closed = decayed_usage([AllocationInterval("a", Resources(gpus=1), 0, 100)], 100, H)
    assert open_["a"].gpus == pytest.approx(closed["a"].gpus)
    beyond = decayed_usage([AllocationInterval("a", Resources(gpus=1), 0, 500)], 100, H)
    assert beyond["a"].gpus == pytest.approx(closed["a"].gpus)
    future = decayed_usage([AllocationInterval("a", Resources(gpus=1), 200, 300)], 100, H)
    assert future["a"].gpus == 0


def test_usage_one_half_life_ago_counts_half() -> None:
    usage = decayed_usage([AllocationInterval("a", Resources(gpus=8), 0, 1)], H + 1, H)
    assert usage["a"].gpus == pytest.approx(4.0, rel=1e-3)


def test_holding_forever_tends_to_rate_times_half_life_over_ln2() -> None:
    usage = decayed_usage([AllocationInterval("a", Resources(gpus=3), 0, None)], 60 * H, H)
    assert usage["a"].gpus == pytest.approx(3 * H / math.log(2), rel=1e-9)


def test_teams_are_kept_apart_and_invalid_half_life_is_refused() -> None:
    usage = decayed_usage(
        [
            AllocationInterval("a", Resources(gpus=1), 0, 10),
            AllocationInterval("b", Resources(gpus=2), 0, 10),
            AllocationInterval("a", Resources(gpus=1), 10, 20),
        ],
        20,
        H,
    )
    assert set(usage) == {"a", "b"}
    assert usage["a"].gpus == pytest.approx(decay_weight(0, 20, 20, H))
    with pytest.raises(ValueError, match="half_life"):
        decayed_usage([], 0, 0)


@settings(max_examples=200, deadline=None)
@given(
    start=st.floats(0, 1e6),
    length=st.floats(0, 1e6),
    cut=st.floats(0, 1),
    after=st.floats(0, 1e6),
    half_life=st.floats(1, 1e6),
)
def test_additive_nonnegative_and_never_above_undecayed(
    start: float, length: float, cut: float, after: float, half_life: float
) -> None:
    end = start + length
    now = end + after
    middle = start + cut * length
    whole = decay_weight(start, end, now, half_life)
    parts = decay_weight(start, middle, now, half_life) + decay_weight(middle, end, now, half_life)
    assert whole == pytest.approx(parts, rel=1e-9, abs=1e-9)
    assert 0 <= whole <= length * (1 + 1e-12) + 1e-9


# -- accounting ----------------------------------------------------------------------------


def interval(
    team: str, gpus: float, start: float, end: float | None, job_id: str = "j"
) -> AllocationInterval:
    return AllocationInterval(team, Resources(8, gpus, 2 * GiB), start, end, job_id)


def test_allocated_seconds_of_a_closed_and_an_open_interval() -> None:
    done = interval("t", 4, 10, 110)
    assert allocated(done, 1000) == Resources(8 * 100, 4 * 100, 2 * GiB * 100)
    running = interval("t", 4, 50, None)
    assert allocated(running, 60).gpus == 4 * 10
    assert allocated(interval("t", 4, 100, None), 60).gpus == 0  # starts after now


def test_a_window_clips_intervals() -> None:
    assert interval_seconds(interval("t", 1, 0, 100), now=1000, since=40) == 60
    assert interval_seconds(interval("t", 1, 0, 100), now=1000, since=200) == 0
    assert interval_seconds(interval("t", 1, 0, None), now=50, since=20) == 30


def test_sums_per_job_and_team_count_every_run_of_a_preempted_job() -> None:
    intervals = [
        interval("x", 2, 0, 10, "a"),
        interval("x", 2, 20, 30, "a"),  # a ran again after a preemption
        interval("x", 1, 0, 5, "b"),
        interval("y", 0, 0, None, "c"),
    ]
    assert by_job(intervals, 40)["a"].gpus == 2 * 10 + 2 * 10
    teams = by_team(intervals, 40)
    assert teams["x"].gpus == 40 + 5
    assert teams["y"].gpus == 0 and teams["y"].cpus == 8 * 40


@settings(max_examples=200, deadline=None)
@given(
    shapes=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),
            st.floats(0, 1000),
            st.one_of(st.none(), st.floats(0, 500)),
            st.integers(1, 4),
        ),
        max_size=30,
    ),
    calls=st.lists(st.floats(0, 2000), min_size=1, max_size=8),
)
def test_running_totals_equal_a_full_recount_at_every_call(
    shapes: list[tuple[str, float, float | None, int]], calls: list[float]
) -> None:
    """Intervals become known as they end (a store writes each end when it happens);
    running totals, which read only recent intervals, always equal a sum over all of them."""
    intervals = [
        AllocationInterval(
            team, Resources(cpus=1, gpus=gpus), start, None if d is None else start + d
        )
        for team, start, d, gpus in shapes
    ]
    totals = RunningTotals(settle_s=50)
    for now in sorted(calls):
        known = [
            i
            if i.end is None or i.end <= now
            else AllocationInterval(i.team, i.resources, i.start, None)
            for i in intervals
            if i.start <= now
        ]

        def since(
            horizon: float | None, known: list[AllocationInterval] = known
        ) -> list[AllocationInterval]:
            return [i for i in known if horizon is None or i.end is None or i.end >= horizon]

        got = totals.totals(since, now)
        want = by_team(known, now)
        assert set(got) == set(want)
        for team, total in want.items():
            assert got[team].gpus == pytest.approx(total.gpus, abs=1e-6)
            assert got[team].cpus == pytest.approx(total.cpus, abs=1e-6)


def _fair_order_by_heap(
    queues: dict[str, list[tuple[str, Resources | None]]],
    allocation: dict[str, list[float]],
    capacity: Resources,
    weights: dict[str, float],
    past_usage: dict[str, Resources],
    half_life: float,
) -> list[tuple[str, Resources | None]]:
    """``fair_order`` as it was written first: a heap of each team's next share, popped
    one job at a time (the reference the faster one must equal)."""
    import heapq

    if len(queues) == 1:
        return list(next(iter(queues.values())))
    caps = [(i, float(c)) for i, c in enumerate((capacity.cpus, capacity.gpus, capacity.memory))]
    caps = [(i, c) for i, c in caps if c > 0]
    scale = math.log(2.0) / half_life
    alloc = {team: list(a) for team, a in allocation.items()}
    for team in queues:
        past = past_usage.get(team, Resources())
        a = alloc.setdefault(team, [0.0, 0.0, 0.0])
        a[0] += past.cpus * scale
        a[1] += past.gpus * scale
        a[2] += past.memory * scale

    def share(team: str) -> float:
        a = alloc[team]
        found = None
        for i, c in caps:
            s = a[i] / c
            if found is None or s > found:
                found = s
        return (0.0 if found is None else found) / weights[team]

    heap = [(share(team), team) for team in queues]
    heapq.heapify(heap)
    cursor = dict.fromkeys(queues, 0)
    order = []
    while heap:
        _, team = heapq.heappop(heap)
        item = queues[team][cursor[team]]
        cursor[team] += 1
        order.append(item)
        if item[1] is not None:
            a = alloc[team]
            a[0] += item[1].cpus
            a[1] += item[1].gpus
            a[2] += item[1].memory
        if cursor[team] < len(queues[team]):
            heapq.heappush(heap, (share(team), team))
    return order


_amount = st.sampled_from([0.0, 0.5, 1.0, 2.0, 4.0, 8.0, -1.0])


@settings(max_examples=300, deadline=None)
@given(
    jobs=st.lists(
        st.tuples(
            st.sampled_from("abcd"),
            st.one_of(
                st.none(),
                st.builds(lambda c, g, m: Resources(c, g, m), _amount, _amount, st.integers(-1, 3)),
            ),
        ),
        min_size=1,
        max_size=40,
    ),
    held=st.dictionaries(st.sampled_from("abcd"), st.lists(_amount, min_size=3, max_size=3)),
    past=st.dictionaries(
        st.sampled_from("abcd"),
        st.builds(lambda c, g: Resources(c, g, 0), _amount, _amount),
    ),
    weights=st.lists(st.sampled_from([0.5, 1.0, 2.0, 3.0]), min_size=4, max_size=4),
    capacity=st.sampled_from(
        [Resources(64, 8, 512), Resources(64, 0, 512), Resources(0, 8, 0), Resources()]
    ),
)
def test_fair_order_equals_the_one_job_at_a_time_heap(
    jobs: list[tuple[str, Resources | None]],
    held: dict[str, list[float]],
    past: dict[str, Resources],
    weights: list[float],
    capacity: Resources,
) -> None:
    """Shares computed team by team and merged give the order of the heap popped one job
    at a time, also when a size is negative (shares then fall: the merge, not a sort)."""
    queues: dict[str, list[tuple[str, Resources | None]]] = {}
    for i, (team, size) in enumerate(jobs):
        queues.setdefault(team, []).append((f"{team}{i}", size))
    team_weights = dict(zip("abcd", weights, strict=True))
    expected = _fair_order_by_heap(queues, held, capacity, team_weights, past, H)
    found = fair_order(queues, held, capacity, team_weights, past, H, lambda job: job[1])
    assert found == expected
