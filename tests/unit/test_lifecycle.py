"""Transitions are enforced in one place; terminal states are final."""

from __future__ import annotations

import itertools
import re

import pytest

from dcsched.core import lifecycle
from dcsched.core.lifecycle import (
    ALLOWED_TRANSITIONS,
    TERMINAL_STATES,
    InvalidTransition,
    JobState,
    check_transition,
)


def test_happy_path_is_allowed() -> None:
    path = [JobState.PENDING, JobState.ADMITTED, JobState.RUNNING, JobState.SUCCEEDED]
    for current, target in itertools.pairwise(path):
        check_transition("j", current, target)


@pytest.mark.parametrize("state", [s for s in JobState if not s.is_terminal()])
def test_cancel_works_from_every_live_state(state: JobState) -> None:
    check_transition("j", state, JobState.CANCELLED)


@pytest.mark.parametrize(("current", "target"), itertools.product(TERMINAL_STATES, JobState))
def test_nothing_leaves_a_terminal_state(current: JobState, target: JobState) -> None:
    with pytest.raises(InvalidTransition, match="already ended"):
        check_transition("j", current, target)


def test_skipping_admission_is_refused() -> None:
    with pytest.raises(InvalidTransition, match="cannot go from PENDING to RUNNING"):
        check_transition("j", JobState.PENDING, JobState.RUNNING)


def test_table_covers_every_state() -> None:
    assert set(ALLOWED_TRANSITIONS) == set(JobState)


def test_the_module_docstring_lists_exactly_the_allowed_transitions() -> None:
    documented: set[tuple[JobState, JobState]] = set()
    for line in (lifecycle.__doc__ or "").splitlines():
        found = re.match(r"\s+([A-Z]+)\s+->\s+([A-Z]+(?: \| [A-Z]+)*)", line)
        if found:
            for target in found.group(2).split(" | "):
                documented.add((JobState(found.group(1)), JobState(target)))
    allowed = {(s, t) for s, targets in ALLOWED_TRANSITIONS.items() for t in targets}
    assert documented == allowed
