"""The quota ledger: what each team uses against its nominal quota, and what it may borrow
from its cohort.

The ledger is built from the active jobs (ADMITTED or RUNNING: they hold resources) and
answers, for a request, whether the team can have it within its nominal quota, only by
borrowing, or not at all (with the reason in words). ``take`` and ``give`` keep it
current while an admission pass admits and preempts.

Words:
- dimension: one thing quotas count: ``cpus``, ``gpus``, ``memory`` (bytes), and
  ``gpus:<type>`` for GPUs of one type (node label ``dcsched.io/gpu-type``). A job is
  charged its whole gang (workers x per-worker) in each, and its GPUs also in
  ``gpus:<type>`` when its ``node_selector`` names a GPU type. A job that names no type
  is charged in ``gpus`` only.
- tracked: a team is limited in a dimension only if its quota gives it a number there
  (``gpu_types`` lists the type). An untracked dimension (``None``, or a GPU type not
  listed) is unlimited for that team: it neither lends nor borrows it. Unlisted teams
  (when the configuration allows them) are untracked everywhere and have no cohort.
- nominal N: the team's quota in a dimension; used U: what its active jobs hold.
- lendable L = min(lending limit, N) (N without a limit): the part of its nominal quota a
  team lets its cohort use while it does not need it; its guaranteed part G = N - L is
  never lent.
- excess E = max(0, U - G): what a team draws from its cohort's pool; the pool holds
  P = sum of L over the cohort's members tracking that dimension.
- borrowing: using more than N. A team borrows ``U - N`` (if positive).

Invariants, per tracked dimension (checked by ``check`` before every ``take`` that an
admission makes):
- a team without a cohort never uses more than N;
- a team in a cohort never uses more than N + its borrowing limit, and the cohort's
  members together draw no more than its pool: sum(E) <= P. Equivalently, what all
  borrowers borrow together is at most the unused lendable quota of the others, so a
  team exceeds its nominal quota only by borrowing other members' unused quota, within
  its borrowing limit and their lending limits.
A team within its nominal quota can still be blocked, when others have borrowed its
lendable part; ``QuotaFit.reclaimable`` says so, and admission may then preempt the
borrowers (reclaim).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from dcsched.core.config import GPU_TYPE_LABEL, ClusterConfig, Quota, Team
from dcsched.core.job import Job
from dcsched.core.resources import EPSILON, Resources
from dcsched.core.units import format_bytes

_INF = float("inf")
_WHOLE_LIMIT = 2.0**52

QuotaKind = Literal["fits-nominal", "borrows", "blocked"]


@dataclass(frozen=True)
class QuotaFit:
    """The ledger's answer for one request.

    ``borrowed``: per dimension, how much of the request lies beyond the team's nominal
    quota (empty unless ``kind == "borrows"``). ``reason`` explains a block in words.
    ``reclaimable``: blocked although the team stays within its nominal quota in every
    dimension, because other members borrowed its lendable part.
    """

    kind: QuotaKind
    reason: str = ""
    borrowed: Mapping[str, float] = field(default_factory=dict)
    reclaimable: bool = False

    @property
    def ok(self) -> bool:
        return self.kind != "blocked"


_FITS = QuotaFit("fits-nominal")


def job_gpu_type(job: Job) -> str | None:
    """The GPU type a job is pinned to by its node selector, if any."""
    return job.request.node_selector.get(GPU_TYPE_LABEL)


def dimensions(request: Resources, gpu_type: str | None) -> list[tuple[str, float]]:
    """The request's amount in each dimension it touches (GPU dimensions first)."""
    dims: list[tuple[str, float]] = []
    if request.gpus > 0:
        if gpu_type:
            dims.append((f"gpus:{gpu_type}", request.gpus))
        dims.append(("gpus", request.gpus))
    if request.cpus > 0:
        dims.append(("cpus", request.cpus))
    if request.memory > 0:
        dims.append(("memory", float(request.memory)))
    return dims


def _quota_numbers(quota: Quota) -> dict[str, float]:
    numbers: dict[str, float] = {}
    if quota.gpus is not None:
        numbers["gpus"] = quota.gpus
    if quota.cpus is not None:
        numbers["cpus"] = quota.cpus
    if quota.memory is not None:
        numbers["memory"] = float(quota.memory)
    for gpu_type, amount in quota.gpu_types.items():
        numbers[f"gpus:{gpu_type}"] = amount
    return numbers


@dataclass(frozen=True)
class _TeamQuota:
    name: str
    cohort: str | None
    nominal: Mapping[str, float]  # tracked dimensions only
    lendable: Mapping[str, float]  # L per tracked dimension
    borrow_limit: Mapping[str, float]  # per tracked dimension; inf without a limit
    guaranteed: Mapping[str, float]  # G = N - L per tracked dimension

    @classmethod
    def of(cls, team: Team) -> _TeamQuota:
        nominal = _quota_numbers(team.quota)
        lending = _quota_numbers(team.lending_limit) if team.lending_limit else {}
        borrowing = _quota_numbers(team.borrowing_limit) if team.borrowing_limit else {}
        return cls(
            name=team.name,
            cohort=team.cohort,
            nominal=nominal,
            lendable={d: min(n, lending.get(d, n)) for d, n in nominal.items()},
            borrow_limit={d: borrowing.get(d, _INF) for d in nominal},
            guaranteed={d: n - min(n, lending.get(d, n)) for d, n in nominal.items()},
        )

    def excess(self, dim: str, used: float) -> float:
        return max(0.0, used - self.guaranteed[dim])


class QuotaLedger:
    """Each team's usage against its quota, and each cohort's pool; see the module doc."""

    def __init__(self, config: ClusterConfig, active: Iterable[Job] = ()) -> None:
        self._config = config
        self._teams: dict[str, _TeamQuota | None] = {}
        self._members: dict[str, tuple[_TeamQuota, ...]] = {}
        self._pool: dict[tuple[str, str], float] = {}
        self._used: dict[str, dict[str, float]] = {}
        self._excess: dict[tuple[str, str], float] = {}
        self._answers: dict[tuple[str, int, str | None], tuple[Resources, QuotaFit]] = {}
        self._dimensions: dict[
            tuple[int, str | None], tuple[Resources, tuple[tuple[str, float], ...]]
        ] = {}
        """``dimensions`` per request object (by identity, kept alive here) and GPU type;
        shared with copies."""
        self.changes = 0
        """How many ``take``s and ``give``s this ledger has had: while it stays the same,
        so do the ledger's answers."""
        for team in config.teams:
            self._teams[team.name] = _TeamQuota.of(team)
        for quota in list(self._teams.values()):
            if quota is not None and quota.cohort is not None:
                members = self._members.get(quota.cohort, ())
                self._members[quota.cohort] = (*members, quota)
                for dim, lendable in quota.lendable.items():
                    key = (quota.cohort, dim)
                    self._pool[key] = self._pool.get(key, 0.0) + lendable
                    self._excess.setdefault(key, 0.0)
        for job in active:
            self.take(job.team, job.request.resources.total(), job_gpu_type(job))

    def copy(self) -> QuotaLedger:
        clone = QuotaLedger.__new__(QuotaLedger)
        clone._config = self._config
        clone._teams = dict(self._teams)
        clone._members = self._members
        clone._pool = self._pool
        clone._used = {team: dict(used) for team, used in self._used.items()}
        clone._excess = dict(self._excess)
        clone._answers = {}
        clone._dimensions = self._dimensions
        clone.changes = 0
        return clone

    def whole(self) -> bool:
        """Whether every number the ledger adds up is a whole number below 2**52 (so its
        sums do not depend on their order)."""
        values = [*self._excess.values(), *self._pool.values()]
        for used in self._used.values():
            values.extend(used.values())
        for quota in self._teams.values():
            if quota is not None:
                values.extend(quota.guaranteed.values())
        return all(v.is_integer() and abs(v) < _WHOLE_LIMIT for v in map(float, values))

    # -- lookups -------------------------------------------------------------------------

    def _team(self, name: str) -> _TeamQuota | None:
        if name not in self._teams:
            team = self._config.team(name)  # unlisted: no quota, or None if refused
            self._teams[name] = None if team is None else _TeamQuota.of(team)
        return self._teams[name]

    def known(self, team: str) -> bool:
        """Whether the team may run at all (listed, or unlisted teams are allowed)."""
        return self._team(team) is not None

    def used(self, team: str) -> dict[str, float]:
        """What the team's jobs hold now, per dimension."""
        return dict(self._used.get(team, {}))

    def nominal(self, team: str) -> dict[str, float]:
        """The team's nominal quota per tracked dimension."""
        quota = self._team(team)
        return dict(quota.nominal) if quota else {}

    def borrowing(self, team: str) -> dict[str, float]:
        """How much the team uses beyond its nominal quota, per dimension where it does."""
        quota = self._team(team)
        if quota is None:
            return {}
        used = self._used.get(team, {})
        over = {d: used.get(d, 0.0) - n for d, n in quota.nominal.items()}
        return {d: amount for d, amount in over.items() if amount > EPSILON}

    def cohort_of(self, team: str) -> str | None:
        quota = self._team(team)
        return quota.cohort if quota else None

    def cohort_members(self, team: str) -> tuple[str, ...]:
        cohort = self.cohort_of(team)
        return tuple(m.name for m in self._members.get(cohort, ())) if cohort else ()

    # -- updates -------------------------------------------------------------------------

    def take(self, team: str, request: Resources, gpu_type: str | None) -> None:
        self._add(team, request, gpu_type, 1.0)

    def give(self, team: str, request: Resources, gpu_type: str | None) -> None:
        self._add(team, request, gpu_type, -1.0)

    def _add(self, team: str, request: Resources, gpu_type: str | None, sign: float) -> None:
        self.changes += 1
        if self._answers:
            self._answers = {}
        quota = self._team(team)
        used = self._used.get(team)
        if used is None:
            used = self._used[team] = {}
        cohort = quota.cohort if quota is not None else None
        guaranteed = quota.guaranteed if quota is not None else {}
        excess = self._excess
        known = self._dimensions.get((id(request), gpu_type))
        if known is None or known[0] is not request:
            if len(self._dimensions) >= 10_000:
                self._dimensions.clear()  # bounded: few distinct requests in practice
            known = (request, tuple(dimensions(request, gpu_type)))
            self._dimensions[id(request), gpu_type] = known
        for dim, amount in known[1]:
            before = used.get(dim, 0.0)
            after = before + sign * amount
            if abs(after) < EPSILON:
                after = 0.0
            used[dim] = after
            if cohort is not None:
                g = guaranteed.get(dim)
                if g is not None:
                    # quota.excess(dim, after) - quota.excess(dim, before), inline
                    key = (cohort, dim)
                    excess[key] += max(0.0, after - g) - max(0.0, before - g)

    # -- the question --------------------------------------------------------------------

    def check(self, team: str, request: Resources, gpu_type: str | None) -> QuotaFit:
        """Whether ``team`` may have ``request`` more (see QuotaFit). Answers are
        remembered until the next ``take`` or ``give``."""
        quota = self._teams.get(team)
        if quota is not None and not quota.nominal:
            return _FITS  # untracked everywhere: unlimited
        # Keyed by the request object (kept alive by its entry, so its id is not reused):
        # hashing a Resources value costs more than the lookup; an equal request in
        # another object is only answered again.
        key = (team, id(request), gpu_type)
        found = self._answers.get(key)
        if found is not None and found[0] is request:
            return found[1]
        answer = self._check(team, request, gpu_type)
        self._answers[key] = (request, answer)
        return answer

    def _check(self, team: str, request: Resources, gpu_type: str | None) -> QuotaFit:
        quota = self._team(team)
        if quota is None:
            return QuotaFit(
                "blocked",
                f"team {team} is not a team of this cluster (unlisted teams are refused)",
            )
        used = self._used.get(team, {})
        borrowed: dict[str, float] = {}
        blocked: str | None = None
        reclaim_blocks: list[str] = []
        within_nominal = True
        for dim, amount in dimensions(request, gpu_type):
            nominal = quota.nominal.get(dim)
            if nominal is None:
                continue  # untracked: unlimited for this team
            before = used.get(dim, 0.0)
            after = before + amount
            over = after > nominal + EPSILON
            within_nominal = within_nominal and not over
            cohort = quota.cohort
            if cohort is None:
                if over and blocked is None:
                    blocked = self._over_words(team, dim, before, nominal, amount) + (
                        " and it is in no cohort, so it cannot borrow"
                    )
                continue
            key = (cohort, dim)
            others = self._excess[key] - quota.excess(dim, before)
            room = self._pool[key] - others - quota.lendable[dim]  # most it may exceed N by
            if not over:
                if others + quota.excess(dim, after) > self._pool[key] + EPSILON:
                    reclaim_blocks.append(self._reclaim_words(team, dim, after, nominal, cohort))
                continue
            limit = quota.borrow_limit[dim]
            if after - nominal > limit + EPSILON:
                if blocked is None:
                    now_borrowing = max(0.0, before - nominal)
                    blocked = self._over_words(team, dim, before, nominal, amount) + (
                        f" and its borrowing limit is {_fmt(dim, limit)}"
                        + (
                            f" (it already borrows {_fmt(dim, now_borrowing)})"
                            if now_borrowing > EPSILON
                            else ""
                        )
                    )
            elif after - nominal > room + EPSILON:
                if blocked is None:
                    spare = room - max(0.0, before - nominal)
                    tail = (
                        " and its cohort has none to lend"
                        if spare <= EPSILON
                        else f" and its cohort can lend only {_fmt(dim, spare)} more"
                    )
                    blocked = self._over_words(team, dim, before, nominal, amount) + tail
            else:
                borrowed[dim] = after - max(nominal, before)
        if blocked is not None:
            return QuotaFit("blocked", blocked)
        if reclaim_blocks:
            return QuotaFit("blocked", reclaim_blocks[0], reclaimable=within_nominal)
        if borrowed:
            return QuotaFit(
                "borrows",
                "borrows " + ", ".join(f"{_fmt(d, a)} {_label(d)}" for d, a in borrowed.items()),
                borrowed=borrowed,
            )
        return QuotaFit("fits-nominal")

    def over_nominal(self, team: str, request: Resources, gpu_type: str | None) -> bool:
        """Whether the request would take the team over its nominal quota in some tracked
        dimension (then ``check`` never says ``fits-nominal``)."""
        quota = self._team(team)
        if quota is None:
            return True
        used = self._used.get(team, {})
        for dim, amount in dimensions(request, gpu_type):
            nominal = quota.nominal.get(dim)
            if nominal is not None and used.get(dim, 0.0) + amount > nominal + EPSILON:
                return True
        return False

    def reclaim_dims(self, team: str, request: Resources, gpu_type: str | None) -> list[str]:
        """The request's dimensions in which the cohort's pool is short of it even with the
        team at most at its nominal quota: other members borrow what the team is owed, so
        only a reclaim (preempting what they borrowed there) can make room."""
        quota = self._team(team)
        if quota is None or quota.cohort is None:
            return []
        used = self._used.get(team, {})
        short = []
        for dim, amount in dimensions(request, gpu_type):
            nominal = quota.nominal.get(dim)
            if nominal is None:
                continue
            before = used.get(dim, 0.0)
            key = (quota.cohort, dim)
            others = self._excess[key] - quota.excess(dim, before)
            within = min(before + amount, nominal)
            if others + quota.excess(dim, within) > self._pool[key] + EPSILON:
                short.append(dim)
        return short

    def borrowers(self, team: str, dim: str) -> list[str]:
        """Other members of the team's cohort that use more than their quota in ``dim``."""
        names = []
        for member in self._members.get(self.cohort_of(team) or "", ()):
            if member.name != team and dim in member.nominal:
                used = self._used.get(member.name, {}).get(dim, 0.0)
                if used > member.nominal[dim] + EPSILON:
                    names.append(member.name)
        return names

    # -- words ---------------------------------------------------------------------------

    def _over_words(self, team: str, dim: str, used: float, nominal: float, amount: float) -> str:
        label = _label(dim)
        if used >= nominal - EPSILON:
            return f"team {team} is at its {label} quota {_fmt(dim, used)}/{_fmt(dim, nominal)}"
        return (
            f"team {team} uses {_fmt(dim, used)}/{_fmt(dim, nominal)} of its {label} quota "
            f"and this job needs {_fmt(dim, amount)}"
        )

    def _reclaim_words(self, team: str, dim: str, after: float, nominal: float, cohort: str) -> str:
        borrowers = self.borrowers(team, dim)
        who = ", ".join(borrowers) if borrowers else "other teams"
        return (
            f"team {team} is within its {_label(dim)} quota ({_fmt(dim, after)}/"
            f"{_fmt(dim, nominal)} with this job), but cohort {cohort} has lent that quota "
            f"to {who}; waiting for it to be given back"
        )


def _label(dim: str) -> str:
    if dim.startswith("gpus:"):
        return f"{dim[5:]} GPU"
    return {"gpus": "GPU", "cpus": "CPU", "memory": "memory"}.get(dim, dim)


def _fmt(dim: str, value: float) -> str:
    if dim == "memory":
        return format_bytes(round(value)) if value != _INF else "unlimited"
    if value == _INF:
        return "unlimited"
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
