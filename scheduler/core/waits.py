"""Why a pending job waits, as a typed value: a ``WaitKind`` (stable, for programs: the
API's ``reason_kind``) with the words that say it for this job (for people: ``reason``).

========================  ===================================================================
kind                      the job waits because ...
========================  ===================================================================
``dependency``            a job it depends on has not succeeded yet
``unknown-team``          its team is not a team of the cluster (unlisted teams are refused)
``never-fits``            it cannot fit the cluster as it is now, even empty
``quota``                 its team's quota (and its cohort's) has no room for it now
``quota-held``            its team holds quota for a job that preempted others to start;
                          the team borrows no more until that job has started
``capacity``              it is the head of the queue and does not fit the free nodes now
``behind-head``           it queues behind the head (no backfill, or it cannot be
                          backfilled: no ``max_runtime``, or the head's start is unknown)
``backfill-shadow``       backfilling it now would delay the head's reserved start
``preemption-pending``    it preempted jobs and starts once they have released their room
========================  ===================================================================

The first five are decided by the job, its team or its dependencies alone: such a job
blocks no other. The next three wait for capacity and get estimated starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class WaitKind(StrEnum):
    """Why a pending job waits (see the module's table); the values never change."""

    DEPENDENCY = "dependency"
    UNKNOWN_TEAM = "unknown-team"
    NEVER_FITS = "never-fits"
    QUOTA = "quota"
    QUOTA_HELD = "quota-held"
    CAPACITY = "capacity"
    BEHIND_HEAD = "behind-head"
    BACKFILL_SHADOW = "backfill-shadow"
    PREEMPTION_PENDING = "preemption-pending"

    @property
    def for_capacity(self) -> bool:
        """Whether the job waits for free capacity (so it has an estimated start)."""
        return self in _FOR_CAPACITY

    @classmethod
    def parse(cls, value: str | None) -> WaitKind | None:
        """The kind a stored value names; None for none, or for one this version does not
        know (a store written by a newer version stays readable)."""
        if value is None:
            return None
        try:
            return cls(value)
        except ValueError:
            return None


_FOR_CAPACITY = frozenset({WaitKind.CAPACITY, WaitKind.BEHIND_HEAD, WaitKind.BACKFILL_SHADOW})


@dataclass(frozen=True, slots=True)
class WaitReason:
    """Why one job waits: the ``kind`` and the ``words`` that say it for this job."""

    kind: WaitKind
    words: str

    def __str__(self) -> str:
        return self.words
