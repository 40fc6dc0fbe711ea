"""Preemption: making room for a job that blocks on quota or capacity by evicting
active jobs (step 4 of an admission pass, ``admission``).

4. Preemption (``queueing.preemption``), tried by a job that blocks on quota or
capacity while no head blocks the queue. Candidates: (a) lower-priority jobs of its
own team; (b) jobs of other teams of its cohort that give back what they borrowed of
a contested resource (reclaim, any priority). Contested: the quota dimensions in
which its cohort's pool is short of the job even with its team at most at its
nominal quota (``QuotaLedger.reclaim_dims``; a GPU type counts as its own
dimension), and, when it does not fit the nodes now, the resources it is short of
there (GPUs also as its pinned type). A team is reclaimed from only if it borrowed
a contested dimension before this pass and still does, and only its jobs charged in
that dimension. A victim set may mix (a) and (b). Never a job whose class is not
preemptible or whose spec says ``preemptible: false``; never a job another
``Preempt`` of this pass claimed; never a same-team job that, requeued, would queue
ahead of the job it makes way for (under ``fifo``: one submitted earlier).
The rule against livelock (Kueue's): a job may preempt only if, with its victims
gone, it fits the nodes *and stays within its team's nominal quota* in every
dimension. A job that would still have to borrow waits instead. So in the next
pass the beneficiary is not deferred with the borrowers (step 3): it is decided in
queue order ahead of its same-team victims, while a reclaimed victim, requeued, would
borrow again and is decided after it (a victim set in which a team's victims could
come back within its nominal quota is refused); the room freed for it is not taken
back, and no job is preempted twice by the same job for the same room.
Victim order: lowest priority first, then the least work lost (the most recently
started), then jobs of teams that borrow before jobs of teams within their quota,
then id. Victims are added in that order until the job fits; then any not needed
are dropped, the last added first. The room the job will use is then held for it in
this pass (quota and capacity), so no later job takes it; and no later job of its
team borrows in this pass (in the next one that job, running, would count first and
leave the beneficiary borrowing, unable to start).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from dcsched.core.activeset import QueuedJob, RunningJob
from dcsched.core.passstate import PassState
from dcsched.core.placement import NoFit, Placement
from dcsched.core.quota import QuotaFit, QuotaLedger
from dcsched.core.resources import Resources

Eviction = tuple[tuple[str, ...], str]
"""The victims' ids and the reason that goes into each one's history."""


class Preemption:
    """Preemption within one pass: what it tried and failed, and the caches it keeps."""

    def __init__(self, state: PassState) -> None:
        self.state = state
        self.failed: dict[tuple[str, tuple[tuple[str, str], ...]], list[tuple[int, Resources]]] = {}
        self._matching: dict[tuple[tuple[str, str], ...], set[str]] = {}
        self._borrows: dict[str, bool] = {}

    def try_for(self, item: QueuedJob, fit: QuotaFit, placed: NoFit | None) -> Eviction | None:
        """Try to make room for ``item`` by preemption; ``placed`` is None when only quota
        blocks it (it fits capacity now), else why it does not fit now. Returns the victims
        and the reason for their histories; their room is then held for ``item``."""
        failed = self.failed.setdefault((item.team, item.selector_key), [])
        for prio, total in failed:
            if item.prio <= prio and total.fits_in(item.total):
                return None  # a no-larger job of this team found no victims this pass
        if self._none_to_take(item):
            failed.append((item.prio, item.total))
            return None
        now_fits: Placement | None = None
        if placed is None:
            found = self.state.place(item)
            if isinstance(found, NoFit):
                placed = found
            else:
                now_fits = found
        candidates = self._candidates(item, fit, placed)
        chosen = self._choose_victims(item, candidates, now_fits) if candidates else None
        if chosen is None:
            failed.append((item.prio, item.total))
            return None
        victims, placement = chosen
        return self._claim(item, victims, placement, now_fits)

    def _none_to_take(self, item: QueuedJob) -> bool:
        """Whether no run can be a victim: none of its team's ranks below it and no other
        team shares its cohort (a quick, exact "no" before placing the job and gathering
        candidates, which would find none)."""
        lowest = self.state.active.lowest_preemptible_prio(item.team)
        if lowest is not None and lowest < item.prio:
            return False
        return all(team == item.team for team in self.state.ledger.cohort_members(item.team))

    def _candidates(self, item: QueuedJob, fit: QuotaFit, placed: NoFit | None) -> list[RunningJob]:
        """Every run that may be a victim for ``item``, in victim order; none when even
        all of them could not make room within the team's nominal quota."""
        matching: set[str] | None = None
        if item.selector:
            key = item.selector_key
            matching = self._matching.get(key)
            if matching is None:
                matching = self._matching[key] = {
                    n.id
                    for n in self.state.active.cluster.alive_nodes()
                    if all(n.labels.get(k) == v for k, v in key)
                }
        out: list[RunningJob] = sorted(
            self._own_candidates(item, fit, matching), key=self._victim_rank
        )
        if self._stays_over(item, out):
            return []  # only its own runs count against its quota: none of the others help
        contested = self._contested(item, placed)
        # Teams that borrow a contested dimension, before this pass and still (not ones
        # that borrow only by this pass's admissions: those jobs are not running yet).
        lenders: dict[str, frozenset[str]] = {}
        if contested:
            for team in self.state.ledger.cohort_members(item.team):
                if team == item.team:
                    continue
                now = self.state.ledger.borrowing(team).keys() & contested
                borrowed = frozenset(now & self.state.ledger_at_start.borrowing(team).keys())
                if borrowed:
                    lenders[team] = borrowed
        for team in sorted(lenders):
            out.extend(self._reclaim_candidates(item, fit, team, lenders[team], matching))
        out.sort(key=self._victim_rank)
        return out

    def _contested(self, item: QueuedJob, placed: NoFit | None) -> frozenset[str]:
        """The quota dimensions the job is short of that others' borrowing can explain:
        where its cohort's pool is short even with its team within nominal quota, and
        (when it does not fit the nodes now) the resources it does not fit by."""
        dims = set(self.state.ledger.reclaim_dims(item.team, item.total, item.gpu_type))
        if placed is not None and self.state.ledger.cohort_of(item.team) is not None:
            short = []
            for kind, probe in (
                ("gpus", Resources(gpus=item.per_worker.gpus)),
                ("cpus", Resources(cpus=item.per_worker.cpus)),
                ("memory", Resources(memory=item.per_worker.memory)),
            ):
                if probe.cpus > 0 or probe.gpus > 0 or probe.memory > 0:
                    found = self.state.index.place(probe, item.workers, "binpack", item.selector)
                    short.append((kind, isinstance(found, NoFit)))
            kinds = [k for k, no in short if no] or [k for k, _ in short]  # else: together
            for kind in kinds:
                dims.add(kind)
                if kind == "gpus" and item.gpu_type:
                    dims.add(f"gpus:{item.gpu_type}")
        return frozenset(dims)

    def _victim_rank(self, run: RunningJob) -> tuple[int, float, int, str]:
        """Victim order: lowest priority first, then the least work lost (the most
        recently started), then runs of borrowing teams before runs of teams within
        their quota, then id."""
        borrows = self._borrows.get(run.team)
        if borrows is None:
            borrows = self._borrows[run.team] = bool(self.state.ledger_at_start.borrowing(run.team))
        return (run.prio, -run.start, 0 if borrows else 1, run.job.id)

    def _own_candidates(
        self, item: QueuedJob, fit: QuotaFit, matching: set[str] | None
    ) -> Iterable[RunningJob]:
        """Lower-priority runs of the job's team that, requeued, queue after it."""
        lowest = self.state.active.lowest_preemptible_prio(item.team)
        if lowest is None or lowest >= item.prio:
            return  # no run of its own team ranks below it
        for run in self.state.active.by_team.get(item.team, {}).values():
            if not run.preemptible or run.job.id in self.state.claimed:
                continue
            if not self._queued_after(run, item):
                continue
            if matching is not None and fit.ok and not any(n in matching for n in run.nodes):
                continue  # frees nothing the job can use
            yield run

    def _reclaim_candidates(
        self,
        item: QueuedJob,
        fit: QuotaFit,
        team: str,
        borrowed: frozenset[str],
        matching: set[str] | None,
    ) -> Iterable[RunningJob]:
        """Runs of ``team``, which borrows the contested dimensions ``borrowed``, that hold
        some of what it borrowed there (any priority: a reclaim takes back a loan)."""
        for run in self.state.active.by_team.get(team, {}).values():
            if not run.preemptible or run.job.id in self.state.claimed:
                continue
            if not any(_holds(run, dim) for dim in borrowed):
                continue  # gives back nothing of what the job is short of
            if matching is not None and fit.ok and not any(n in matching for n in run.nodes):
                continue
            yield run

    def _queued_after(self, run: RunningJob, item: QueuedJob) -> bool:
        """Whether a same-team victim has a lower priority and, were it pending, would
        queue after ``item`` (under fifo: submitted later). So a requeued victim cannot
        take back the room before the job it made way for."""
        if run.prio >= item.prio:
            return False
        if self.state.queueing.policy == "fifo":
            return (run.job.submitted_at, run.job.id) > (item.job.submitted_at, item.job.id)
        return True

    def _fits_without(
        self,
        item: QueuedJob,
        victims: Sequence[RunningJob],
        now_fits: Placement | None,
        as_victims: bool = True,
    ) -> Placement | None:
        """Where the job goes with ``victims`` gone, if it then fits the nodes and stays
        within its team's nominal quota (the rule against livelock: a job that would
        borrow never preempts); ``as_victims``: and they are a valid victim set (see
        ``_victims_would_borrow``)."""
        ledger = self.state.ledger.copy()
        for run in victims:
            ledger.give(run.team, run.total, run.gpu_type)
        if ledger.check(item.team, item.total, item.gpu_type).kind != "fits-nominal":
            return None
        if as_victims and not self._victims_would_borrow(ledger, item, victims):
            return None
        if now_fits is not None:
            return now_fits
        index = self.state.index.copy()
        index.give_all((run.nodes, run.per_worker) for run in victims)
        placed = index.place(item.per_worker, item.workers, item.policy, item.selector)
        return placed if isinstance(placed, Placement) else None

    @staticmethod
    def _victims_would_borrow(
        ledger: QuotaLedger, item: QueuedJob, victims: Iterable[RunningJob]
    ) -> bool:
        """Whether each reclaimed victim, requeued alone, would have to borrow again (so
        the next pass decides it after the beneficiary). Only in doubt when two or more
        come from one team: one alone gives back no more than its team borrowed."""
        by_team: dict[str, list[RunningJob]] = {}
        for run in victims:
            if run.team != item.team:
                by_team.setdefault(run.team, []).append(run)
        for team, runs in by_team.items():
            if len(runs) > 1 and any(
                ledger.check(team, r.total, r.gpu_type).kind == "fits-nominal" for r in runs
            ):
                return False
        return True

    def _stays_over(self, item: QueuedJob, candidates: Sequence[RunningJob]) -> bool:
        """Whether the job's team would exceed its nominal quota with the job even with
        all of ``candidates`` (its own runs, in victim order) gone: then no victim set
        makes it fit within nominal quota, since only the team's own runs count against
        it. A quick, exact "no" before gathering every other team's candidates."""
        ledger = self.state.ledger
        if candidates:
            ledger = ledger.copy()
            for run in candidates:
                ledger.give(run.team, run.total, run.gpu_type)
        return ledger.over_nominal(item.team, item.total, item.gpu_type)

    def _choose_victims(
        self, item: QueuedJob, candidates: list[RunningJob], now_fits: Placement | None
    ) -> tuple[list[RunningJob], Placement] | None:
        if self._fits_without(item, candidates, now_fits, as_victims=False) is None:
            return None  # not even all of them make room
        # Add candidates in victim order until the job fits ...
        index = self.state.index.copy() if now_fits is None else None
        ledger = self.state.ledger.copy()
        chosen: list[RunningJob] = []
        for run in candidates:
            chosen.append(run)
            ledger.give(run.team, run.total, run.gpu_type)
            if index is not None:
                index.give(run.nodes, run.per_worker)
            if ledger.check(item.team, item.total, item.gpu_type).kind != "fits-nominal":
                continue
            if index is None:
                break
            if isinstance(
                index.place(item.per_worker, item.workers, item.policy, item.selector), Placement
            ):
                break
        # ... then drop any that turned out not to be needed, the last added first.
        chosen = self._drop_unneeded(item, chosen, now_fits)
        placement = self._fits_without(item, chosen, now_fits)
        if placement is None:  # pragma: no cover - the loop above ended on a fit
            return None
        return chosen, placement

    def _drop_unneeded(
        self, item: QueuedJob, chosen: list[RunningJob], now_fits: Placement | None
    ) -> list[RunningJob]:
        """Drop the victims the job does not need, the last added first: each one whose
        absence still leaves a valid victim set (``_fits_without``)."""
        if len(chosen) > 2 and self._exact(chosen):
            return self._drop_unneeded_exact(item, chosen, now_fits)
        for run in reversed(list(chosen)):
            if len(chosen) > 1:
                rest = [r for r in chosen if r is not run]
                if self._fits_without(item, rest, now_fits) is not None:
                    chosen = rest
        return chosen

    def _exact(self, victims: Sequence[RunningJob]) -> bool:
        """Whether every number that giving back ``victims`` touches (the ledger's, the
        victims' and their nodes' free capacity) is a whole number small enough that
        float sums of them are exact: then giving all back and taking one again leaves
        the very state that giving back all but that one does."""
        for run in victims:
            for r in (run.total, run.per_worker):
                if not (_whole(r.cpus) and _whole(r.gpus) and _whole(r.memory)):
                    return False
        nodes = {n for run in victims for n in run.nodes}
        return self.state.ledger.whole() and self.state.index.whole(nodes)

    def _drop_unneeded_exact(
        self, item: QueuedJob, chosen: list[RunningJob], now_fits: Placement | None
    ) -> list[RunningJob]:
        """``_drop_unneeded`` in whole numbers (``_exact``): the state without one victim is
        the state without all of them with that one taken again, so each trial costs one
        take instead of giving back every other victim."""
        ledger = self.state.ledger.copy()
        index = None if now_fits is not None else self.state.index.copy()
        for run in chosen:
            ledger.give(run.team, run.total, run.gpu_type)
        if index is not None:
            index.give_all((run.nodes, run.per_worker) for run in chosen)
        # ``_victims_would_borrow`` of what is left, kept as counts: per other team, how
        # many victims and how many of each request (equal requests get equal answers).
        sizes: dict[str, int] = {}
        requests: dict[str, dict[tuple[Resources, str | None], int]] = {}
        for run in chosen:
            if run.team != item.team:
                sizes[run.team] = sizes.get(run.team, 0) + 1
                kinds = requests.setdefault(run.team, {})
                kinds[run.total, run.gpu_type] = kinds.get((run.total, run.gpu_type), 0) + 1
        for run in reversed(list(chosen)):
            if len(chosen) <= 1:
                break
            rest = [r for r in chosen if r is not run]
            trial = ledger.copy()
            trial.take(run.team, run.total, run.gpu_type)
            if trial.check(item.team, item.total, item.gpu_type).kind != "fits-nominal":
                continue
            own = run.team == item.team
            if not own:
                sizes[run.team] -= 1
                requests[run.team][run.total, run.gpu_type] -= 1
            if not _counted_victims_would_borrow(trial, sizes, requests):
                if not own:
                    sizes[run.team] += 1
                    requests[run.team][run.total, run.gpu_type] += 1
                continue
            room = None
            if index is not None:
                room = index.copy()
                room.take_back(run.nodes, run.per_worker)
                placed = room.place(item.per_worker, item.workers, item.policy, item.selector)
                if not isinstance(placed, Placement):
                    if not own:
                        sizes[run.team] += 1
                        requests[run.team][run.total, run.gpu_type] += 1
                    continue
            chosen, ledger, index = rest, trial, room
        return chosen

    def _claim(
        self,
        item: QueuedJob,
        victims: list[RunningJob],
        placement: Placement,
        now_fits: Placement | None,
    ) -> Eviction:
        ends = None if item.runtime is None else self.state.now + item.runtime
        ledger = self.state.own_ledger()
        index = self.state.own_index()
        self.state.holding.setdefault(item.team, item.job.id)
        for run in victims:
            self.state.claimed.add(run.job.id)
            self.state.held_until[run.job.id] = ends
            ledger.give(run.team, run.total, run.gpu_type)
        ledger.take(item.team, item.total, item.gpu_type)
        if now_fits is not None:
            index.take(now_fits.nodes, item.per_worker)
            if ends is not None:
                self.state.release_later(ends, now_fits.nodes, item.per_worker)
        else:
            # Hold for the job whatever is free now of what it will use; the rest comes
            # from its victims.
            counts: dict[str, int] = {}
            for node in placement.nodes:
                counts[node] = counts.get(node, 0) + 1
            for node, count in counts.items():
                need = item.per_worker.scaled(count)
                free = index.free(node)
                hold = Resources(
                    min(need.cpus, free.cpus),
                    min(need.gpus, free.gpus),
                    min(need.memory, free.memory),
                )
                if hold.cpus > 0 or hold.gpus > 0 or hold.memory > 0:
                    index.take([node], hold)
                    if ends is not None:
                        self.state.release_later(ends, [node], hold)
        return tuple(r.job.id for r in victims), self._why(item, victims)

    def _why(self, item: QueuedJob, victims: Sequence[RunningJob]) -> str:
        parts = []
        same = [r for r in victims if r.team == item.team]
        if same:
            parts.append(
                f"preempted for {item.job.id} of team {item.team}, whose priority class "
                f"{item.job.priority} outranks it"
            )
        others = sorted({r.team for r in victims if r.team != item.team})
        if others:
            parts.append(
                f"preempted: team {item.team} reclaims the quota that team "
                f"{', '.join(others)} borrowed (for job {item.job.id})"
            )
        return "; ".join(parts)


def _counted_victims_would_borrow(
    ledger: QuotaLedger,
    sizes: dict[str, int],
    requests: dict[str, dict[tuple[Resources, str | None], int]],
) -> bool:
    """``Preemption._victims_would_borrow`` over victims given as counts: per team other
    than the beneficiary's, how many, and how many of each (total, GPU type)."""
    for team, kinds in requests.items():
        if sizes[team] > 1 and any(
            count > 0 and ledger.check(team, total, gpu_type).kind == "fits-nominal"
            for (total, gpu_type), count in kinds.items()
        ):
            return False
    return True


_WHOLE_LIMIT = 2.0**52


def _whole(x: float) -> bool:
    return float(x).is_integer() and -_WHOLE_LIMIT < x < _WHOLE_LIMIT


def _holds(run: RunningJob, dim: str) -> bool:
    """Whether a run is charged in a quota dimension (so preempting it gives some back)."""
    if dim == "gpus":
        return run.total.gpus > 0
    if dim.startswith("gpus:"):
        return run.total.gpus > 0 and run.gpu_type == dim[5:]
    if dim == "cpus":
        return run.total.cpus > 0
    return run.total.memory > 0
