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
from dcsched.core.fairshare import decay_weight, decayed_usage
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
