"""Job states and the one function that enforces legal transitions.

    PENDING   -> ADMITTED   resources reserved (placement group) for the gang
    PENDING   -> CANCELLED  cancelled while queued, or by a pass: a dependency failed, was
                            cancelled or does not exist (``admission.Cancel``)
    ADMITTED  -> RUNNING    the Ray job started
    ADMITTED  -> PENDING    requeued: the reservation did not become ready in time, the
                            job was preempted, or its node was lost
    ADMITTED  -> SUCCEEDED | FAILED  the Ray job ended before we saw it running
    ADMITTED  -> CANCELLED
    RUNNING   -> SUCCEEDED | FAILED | CANCELLED
    RUNNING   -> PENDING    requeued: preempted, its node lost, or its run lost (Ray's
                            cluster restarted); it resumes from its checkpoint

SUCCEEDED, FAILED and CANCELLED are terminal: nothing leaves them.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    PENDING = "PENDING"
    ADMITTED = "ADMITTED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES

    def holds_resources(self) -> bool:
        return self in (JobState.ADMITTED, JobState.RUNNING)


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

ALLOWED_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.ADMITTED, JobState.CANCELLED}),
    JobState.ADMITTED: frozenset(
        {
            JobState.RUNNING,
            JobState.PENDING,
            JobState.SUCCEEDED,
            JobState.FAILED,
            JobState.CANCELLED,
        }
    ),
    JobState.RUNNING: frozenset(
        {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.PENDING}
    ),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


class InvalidTransition(ValueError):
    def __init__(self, job_id: str, current: JobState, target: JobState):
        self.job_id, self.current, self.target = job_id, current, target
        if current.is_terminal():
            why = f"job {job_id} already ended as {current}"
        else:
            why = f"job {job_id} cannot go from {current} to {target}"
        super().__init__(why)


def check_transition(job_id: str, current: JobState, target: JobState) -> None:
    """Raise InvalidTransition unless ``current -> target`` is allowed."""
    if target not in ALLOWED_TRANSITIONS[current]:
        raise InvalidTransition(job_id, current, target)
