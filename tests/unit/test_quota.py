"""The quota ledger: nominal quotas, cohorts, borrowing and lending limits, GPU types."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dcsched.core.config import ClusterConfig
from dcsched.core.quota import QuotaLedger
from dcsched.core.resources import Resources

GiB = 1024**3


def cfg(*teams: dict[str, Any], unlisted: str = "allow") -> ClusterConfig:
    return ClusterConfig.model_validate({"teams": list(teams), "unlisted_teams": unlisted})


def gpus(n: float) -> Resources:
    return Resources(cpus=0, gpus=n, memory=0)


def test_within_nominal_fits() -> None:
    ledger = QuotaLedger(cfg({"name": "research", "quota": {"gpus": 8}}))
    fit = ledger.check("research", gpus(8), None)
    assert fit.kind == "fits-nominal" and fit.ok and not fit.borrowed


def test_at_quota_without_cohort_is_blocked() -> None:
    ledger = QuotaLedger(cfg({"name": "research", "quota": {"gpus": 8}}))
    ledger.take("research", gpus(8), None)
    fit = ledger.check("research", gpus(1), None)
    assert fit.kind == "blocked"
    assert fit.reason == (
        "team research is at its GPU quota 8/8 and it is in no cohort, so it cannot borrow"
    )
    ledger.give("research", gpus(8), None)
    assert ledger.check("research", gpus(8), None).kind == "fits-nominal"


def test_borrows_unused_quota_of_the_cohort() -> None:
    ledger = QuotaLedger(
        cfg(
            {"name": "research", "cohort": "ml", "quota": {"gpus": 8}},
            {"name": "vision", "cohort": "ml", "quota": {"gpus": 4}},
            {"name": "nlp", "cohort": "ml", "quota": {"gpus": 2}},
        )
    )
    ledger.take("research", gpus(8), None)
    fit = ledger.check("research", gpus(5), None)
    assert fit.kind == "borrows" and fit.borrowed == {"gpus": 5}
    assert fit.reason == "borrows 5 GPU"
    ledger.take("research", gpus(5), None)
    assert ledger.borrowing("research") == {"gpus": 5}
    # 1 left to lend: vision's 4 + nlp's 2 - 5
    fit = ledger.check("research", gpus(2), None)
    assert fit.kind == "blocked"
    assert fit.reason == (
        "team research is at its GPU quota 13/8 and its cohort can lend only 1 more"
    )
    ledger.take("research", gpus(1), None)
    fit = ledger.check("research", gpus(1), None)
    assert fit.reason == "team research is at its GPU quota 14/8 and its cohort has none to lend"


def test_the_example_reason() -> None:
    ledger = QuotaLedger(
        cfg(
            {"name": "research", "cohort": "ml", "quota": {"gpus": 8}},
            {"name": "vision", "cohort": "ml", "quota": {"gpus": 4}},
        )
    )
    ledger.take("research", gpus(8), None)
    ledger.take("vision", gpus(4), None)
    fit = ledger.check("research", gpus(2), None)
    assert fit.reason == "team research is at its GPU quota 8/8 and its cohort has none to lend"


def test_partial_quota_words() -> None:
    ledger = QuotaLedger(cfg({"name": "a", "quota": {"cpus": 10}}))
    ledger.take("a", Resources(cpus=7), None)
    fit = ledger.check("a", Resources(cpus=4), None)
    assert fit.reason.startswith("team a uses 7/10 of its CPU quota and this job needs 4")


def test_borrowing_limit() -> None:
    ledger = QuotaLedger(
        cfg(
            {"name": "a", "cohort": "c", "quota": {"gpus": 4}, "borrowing_limit": {"gpus": 2}},
            {"name": "b", "cohort": "c", "quota": {"gpus": 10}},
        )
    )
    assert ledger.check("a", gpus(6), None).kind == "borrows"
    fit = ledger.check("a", gpus(7), None)
    assert fit.kind == "blocked" and "its borrowing limit is 2" in fit.reason
    ledger.take("a", gpus(5), None)
    fit = ledger.check("a", gpus(2), None)
    assert "borrowing limit is 2 (it already borrows 1)" in fit.reason


def test_lending_limit_keeps_a_guaranteed_part() -> None:
    ledger = QuotaLedger(
        cfg(
            {"name": "a", "cohort": "c", "quota": {"gpus": 2}},
            {"name": "b", "cohort": "c", "quota": {"gpus": 10}, "lending_limit": {"gpus": 3}},
        )
    )
    assert ledger.check("a", gpus(5), None).kind == "borrows"
    assert ledger.check("a", gpus(6), None).kind == "blocked"
    ledger.take("b", gpus(8), None)  # b keeps 2 unused, of which a may borrow 2
    assert ledger.check("a", gpus(4), None).kind == "borrows"
    assert ledger.check("a", gpus(5), None).kind == "blocked"


def test_reclaim_when_others_borrowed_the_teams_quota() -> None:
    ledger = QuotaLedger(
        cfg(
            {"name": "a", "cohort": "c", "quota": {"gpus": 4}},
            {"name": "b", "cohort": "c", "quota": {"gpus": 4}},
        )
    )
    ledger.take("b", gpus(7), None)  # b borrows 3 of a's 4
    assert ledger.check("a", gpus(1), None).kind == "fits-nominal"
    fit = ledger.check("a", gpus(2), None)
    assert fit.kind == "blocked" and fit.reclaimable
    assert fit.reason == (
        "team a is within its GPU quota (2/4 with this job), but cohort c has lent that "
        "quota to b; waiting for it to be given back"
    )
    assert ledger.borrowers("a", "gpus") == ["b"]


def test_reclaim_dims_are_where_the_pool_is_short_with_the_team_within_nominal() -> None:
    ledger = QuotaLedger(
        cfg(
            {"name": "a", "cohort": "x", "quota": {"gpus": 4, "cpus": 8}},
            {"name": "b", "cohort": "x", "quota": {"gpus": 4, "cpus": 8}},
            {"name": "c", "cohort": "x", "quota": {"gpus": 4, "cpus": 2}},
        )
    )
    ledger.take("b", Resources(cpus=1, gpus=6), None)  # b borrows 2 GPUs
    ledger.take("c", Resources(cpus=4, gpus=4), None)  # c borrows 2 CPUs
    want = Resources(cpus=1, gpus=4)
    assert ledger.check("a", want, None).reclaimable
    assert ledger.reclaim_dims("a", want, None) == ["gpus"]  # not cpus: c's loan is spare
    assert ledger.borrowing("b") == {"gpus": 2} and ledger.borrowing("c") == {"cpus": 2}
    # Over its own nominal quota, the team counts as at it: b's loan still stands in the way.
    assert ledger.reclaim_dims("a", gpus(7), None) == ["gpus"]
    assert ledger.reclaim_dims("a", gpus(2), None) == []  # the pool has 2 for it
    assert (
        QuotaLedger(cfg({"name": "solo", "quota": {"gpus": 1}})).reclaim_dims("solo", gpus(4), None)
        == []
    )


def test_gpu_type_quotas() -> None:
    ledger = QuotaLedger(
        cfg(
            {"name": "a", "cohort": "c", "quota": {"gpus": 16, "gpu_types": {"A100": 4}}},
            {"name": "b", "cohort": "c", "quota": {"gpus": 8, "gpu_types": {"A100": 2}}},
        )
    )
    ledger.take("a", gpus(4), "A100")
    fit = ledger.check("a", gpus(2), "A100")
    assert fit.kind == "borrows" and fit.borrowed == {"gpus:A100": 2}
    fit = ledger.check("a", gpus(3), "A100")
    assert fit.reason == ("team a is at its A100 GPU quota 4/4 and its cohort can lend only 2 more")
    # A type a does not list is limited by `gpus` only; a job naming no type likewise.
    assert ledger.check("a", gpus(12), "H100").kind == "fits-nominal"
    assert ledger.check("a", gpus(12), None).kind == "fits-nominal"
    assert ledger.used("a") == {"gpus:A100": 4, "gpus": 4}


def test_unlisted_teams_have_no_quota_or_are_refused() -> None:
    allow = QuotaLedger(cfg({"name": "a", "quota": {"gpus": 1}}))
    assert allow.check("newcomer", gpus(1000), None).kind == "fits-nominal"
    assert allow.cohort_of("newcomer") is None
    refuse = QuotaLedger(cfg({"name": "a", "quota": {"gpus": 1}}, unlisted="reject"))
    fit = refuse.check("newcomer", gpus(1), None)
    assert fit.kind == "blocked" and "not a team of this cluster" in fit.reason
    assert not refuse.known("newcomer")


def test_memory_is_counted_in_bytes() -> None:
    ledger = QuotaLedger(cfg({"name": "a", "quota": {"memory": "4GiB"}}))
    ledger.take("a", Resources(memory=3 * GiB), None)
    fit = ledger.check("a", Resources(memory=2 * GiB), None)
    assert fit.reason.startswith("team a uses 3GiB/4GiB of its memory quota")


TEAMS = ("a", "b", "c", "d")


@st.composite
def configs(draw: st.DrawFn) -> ClusterConfig:
    teams = []
    for name in TEAMS:
        entry: dict[str, Any] = {
            "name": name,
            "cohort": draw(st.sampled_from([None, "x", "x", "y"])),
            "quota": {"gpus": draw(st.integers(0, 8)), "cpus": draw(st.integers(0, 16))},
        }
        if draw(st.booleans()):
            entry["borrowing_limit"] = {"gpus": draw(st.integers(0, 4))}
        if draw(st.booleans()):
            entry["lending_limit"] = {"gpus": draw(st.integers(0, 8))}
        teams.append(entry)
    return ClusterConfig.model_validate({"teams": teams})


@settings(max_examples=150, deadline=None)
@given(
    config=configs(),
    steps=st.lists(
        st.tuples(st.sampled_from(TEAMS), st.integers(0, 4), st.integers(0, 6), st.booleans()),
        max_size=40,
    ),
)
def test_checked_takes_keep_every_team_within_quota_or_borrowing_within_limits(
    config: ClusterConfig, steps: list[tuple[str, int, int, bool]]
) -> None:
    ledger = QuotaLedger(config)
    held: list[tuple[str, Resources]] = []
    for team, g, c, release in steps:
        if release and held:
            t, r = held.pop(0)
            ledger.give(t, r, None)
            continue
        request = Resources(cpus=c, gpus=g)
        fit = ledger.check(team, request, None)
        if fit.ok:
            ledger.take(team, request, None)
            held.append((team, request))
        assert_invariant(config, ledger)


def assert_invariant(config: ClusterConfig, ledger: QuotaLedger) -> None:
    for dim in ("gpus", "cpus"):
        cohorts: dict[str, list[tuple[float, float, float]]] = {}
        for team in config.teams:
            nominal = getattr(team.quota, dim)
            used = ledger.used(team.name).get(dim, 0.0)
            limit = getattr(team.borrowing_limit, dim, None) if team.borrowing_limit else None
            lend = getattr(team.lending_limit, dim, None) if team.lending_limit else None
            lendable = nominal if lend is None else min(lend, nominal)
            if team.cohort is None:
                assert used <= nominal + 1e-9
                continue
            if limit is not None:
                assert used - nominal <= limit + 1e-9
            cohorts.setdefault(team.cohort, []).append((used, nominal, lendable))
        for members in cohorts.values():
            borrowed = sum(max(0.0, u - n) for u, n, _ in members)
            unused_lendable = sum(max(0.0, min(lend, n - u)) for u, n, lend in members)
            assert borrowed <= unused_lendable + 1e-9
