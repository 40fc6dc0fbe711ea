"""A cancel stops its job's run outside the service lock: a Ray stop that hangs holds up
neither the scheduling pass nor other cancels, and the hung job is still freed before it
is reported CANCELLED once the stop returns or times out (scripted executor, real
SQLite store, no Ray)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from dcsched.core.job import Job
from dcsched.core.lifecycle import JobState
from dcsched.ports import RayUnreachable, RunPhase
from dcsched.service import STOPPED_OUTSIDE
from tests.unit.test_service import Clocks, Cluster, Executor, make_service, spec


class HangingStop:
    """Makes ``executor.stop`` of one run hang (once) until ``finish``: Ray has stopped
    the run already, but the call does not return; it then returns or raises ``outcome``."""

    def __init__(self, executor: Executor, run_id: str, outcome: Exception | None = None):
        self.entered = threading.Event()
        self._go_on = threading.Event()
        self._plain = executor.stop
        self._executor = executor
        self._run_id = run_id
        self._outcome = outcome
        executor.stop = self.stop  # type: ignore[method-assign]

    def stop(self, run_id: str) -> None:
        if run_id != self._run_id or self.entered.is_set():
            return self._plain(run_id)
        self._executor.phase[run_id] = RunPhase.STOPPED
        self.entered.set()
        assert self._go_on.wait(30), "the test never let the stop finish"
        if self._outcome is not None:
            raise self._outcome
        return self._plain(run_id)

    def finish(self) -> None:
        self._go_on.set()


def in_thread(function: Any, *args: Any) -> tuple[threading.Thread, list[Any]]:
    """Run ``function(*args)``; the list gets its result or the exception it raised."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(function(*args))
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def finished_within(thread: threading.Thread, seconds: float = 10.0) -> bool:
    thread.join(seconds)
    return not thread.is_alive()


@pytest.fixture
def world(tmp_path: Path) -> tuple[Any, Executor]:
    executor = Executor()
    return make_service(tmp_path, executor, Cluster(), Clocks()), executor


def running(service: Any, *names: str) -> list[Job]:
    jobs = [service.submit(spec(name)) for name in names]
    service.tick()
    service.tick()
    assert [service.store.get_job(j.id).state for j in jobs] == [JobState.RUNNING] * len(jobs)
    return jobs


def test_a_hung_stop_holds_up_neither_the_pass_nor_another_cancel(world: Any) -> None:
    service, executor = world
    hung, other = running(service, "hung", "other")
    stop = HangingStop(executor, hung.run_id)
    transitions: list[str] = []
    store_transition = service.store.transition

    def watched(job_id: str, target: JobState, *args: Any, **kwargs: Any) -> Job:
        last = next((c for c in reversed(executor.calls) if c[1] == job_id), None)
        transitions.append(f"{job_id} {target} after {last}")
        return store_transition(job_id, target, *args, **kwargs)

    service.store.transition = watched
    cancelling, cancelled = in_thread(service.cancel, hung.id)
    assert stop.entered.wait(10)

    newcomer = service.submit(spec("newcomer"))
    passing, _ = in_thread(service.tick)
    assert finished_within(passing), "the pass waited for the hung stop"
    assert service.store.get_job(newcomer.id).state is JobState.ADMITTED
    second, other_cancelled = in_thread(service.cancel, other.id)
    assert finished_within(second), "another job's cancel waited for the hung stop"
    assert other_cancelled[0].state is JobState.CANCELLED
    assert other.run_id not in executor.groups
    # Meanwhile the hung job is left to its cancel: still held, not "stopped outside".
    assert service.store.get_job(hung.id).state is JobState.RUNNING
    assert hung.run_id in executor.groups
    assert cancelling.is_alive()

    stop.finish()
    assert finished_within(cancelling)
    job = service.store.get_job(hung.id)
    assert cancelled[0].state is job.state is JobState.CANCELLED
    assert job.reason == "cancelled by user" != STOPPED_OUTSIDE
    assert hung.run_id not in executor.groups
    assert transitions[-1] == f"{hung.id} CANCELLED after {('release', hung.run_id)}"


def test_a_stop_that_times_out_still_ends_the_job_and_the_sweep_frees_it(world: Any) -> None:
    service, executor = world
    (hung,) = running(service, "hung")
    stop = HangingStop(executor, hung.run_id, RayUnreachable("the call timed out"))
    cancelling, cancelled = in_thread(service.cancel, hung.id)
    assert stop.entered.wait(10)
    passing, _ = in_thread(service.tick)
    assert finished_within(passing)
    assert service.store.get_job(hung.id).state is JobState.RUNNING
    stop.finish()
    assert finished_within(cancelling)
    assert cancelled[0].state is JobState.CANCELLED
    service.tick()  # Ray answers again: the sweep it scheduled stops and frees the run
    assert hung.run_id not in executor.groups
    assert ("stop", hung.run_id) in executor.calls


def test_a_stop_that_fails_leaves_the_job_to_the_passes_as_it_was(world: Any) -> None:
    service, executor = world
    (job,) = running(service, "job")
    stop = HangingStop(executor, job.run_id, RuntimeError("Ray said no"))
    stop.finish()
    with pytest.raises(RuntimeError, match="Ray said no"):
        service.cancel(job.id)
    assert service.store.get_job(job.id).state is JobState.RUNNING
    assert service.store.cancel_requests() == {}  # withdrawn: a restart would not cancel it
    service.tick()  # its run was stopped meanwhile: the pass records that, as before
    job = service.store.get_job(job.id)
    assert job.state is JobState.CANCELLED and job.reason == STOPPED_OUTSIDE
    assert job.run_id not in executor.groups


def test_a_preemption_leaves_a_job_being_cancelled_to_its_cancel(world: Any) -> None:
    service, executor = world
    lows = [service.submit(spec(f"low-{i}", "low", cpus=4)) for i in range(2)]
    service.tick()
    service.tick()
    stops = [HangingStop(executor, low.run_id) for low in lows]
    cancels = [in_thread(service.cancel, low.id) for low in lows]
    assert all(stop.entered.wait(10) for stop in stops)
    urgent = service.submit(spec("urgent", "high", cpus=4))
    service.tick()
    assert [service.store.get_job(low.id).state for low in lows] == [JobState.RUNNING] * 2
    assert service.store.get_job(urgent.id).state is JobState.PENDING
    for stop in stops:
        stop.finish()
    assert all(finished_within(thread) for thread, _ in cancels)
    service.tick()
    assert service.store.get_job(urgent.id).state is JobState.ADMITTED  # the room it got
    assert [service.store.get_job(low.id).state for low in lows] == [JobState.CANCELLED] * 2


def test_a_cancel_cut_short_by_a_server_kill_is_finished_by_the_next_server(
    tmp_path: Path,
) -> None:
    """The cancel is recorded before the stop; a server killed while the stop hangs (its
    thread never comes back) leaves the request, which the next server's first pass
    carries out: the run stopped and freed, the job CANCELLED with the reason asked for,
    never "stopped outside dcsched" nor left running."""
    executor, clocks = Executor(), Clocks()
    service = make_service(tmp_path, executor, Cluster(), clocks)
    (job,) = running(service, "job")
    stop = HangingStop(executor, job.run_id)
    cancelling, _ = in_thread(service.cancel, job.id, "cancelled by alice")
    assert stop.entered.wait(10)
    executor.phase[job.run_id] = RunPhase.RUNNING  # the kill came before Ray stopped it
    assert service.store.cancel_requests() == {job.id: "cancelled by alice"}

    restarted = make_service(tmp_path, executor, Cluster(), clocks)  # the old one is dead
    restarted.tick()
    found = restarted.store.get_job(job.id)
    assert found.state is JobState.CANCELLED and found.reason == "cancelled by alice"
    assert job.run_id not in executor.groups
    assert executor.calls.index(("stop", job.run_id)) < executor.calls.index(
        ("release", job.run_id)
    )
    assert restarted.store.cancel_requests() == {}
    stop.finish()  # (the dead server's thread, for the test's sake)
    assert finished_within(cancelling)


def test_a_cancel_request_of_a_job_that_no_longer_holds_anything_just_ends_it(
    tmp_path: Path,
) -> None:
    executor, clocks = Executor(), Clocks()
    service = make_service(tmp_path, executor, Cluster(), clocks)
    waiting = service.submit(spec("waiting"))  # PENDING: no pass has run
    service.store.request_cancel(waiting.id, "cancelled by bob", clocks.now())
    make_service(tmp_path, executor, Cluster(), clocks).tick()
    found = service.store.get_job(waiting.id)
    assert found.state is JobState.CANCELLED and found.reason == "cancelled by bob"
