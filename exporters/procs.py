"""Which local processes belong to which dcsched job, and what they use.

A process belongs to a dcsched job when its environment carries ``DCSCHED_JOB_ID`` and
``DCSCHED_TEAM`` (dcsched sets both in the Ray job's runtime environment, so the driver
and every worker it starts inherit them).

Invariants (what keeps a scrape cheap):
- A process's environment is read once, when its pid is first seen. The answer is cached
  under the process's identity: (pid, start time), the start time as the kernel records
  it (``create_time`` in psutil's words), so a recycled pid is a new process.
- Each scrape lists the pids (one directory read), drops the ones that are gone, reads
  the environment of new ones only, and reads one small file per job process (its CPU
  time, resident memory and start time together). A job process's file stays open
  between scrapes (up to ``MAX_OPEN_FILES``): one ``pread``, and it cannot be fooled by
  a recycled pid (reading it fails once its process is gone).
  Pids of no job are re-checked ``VERIFY_PER_SCAN`` at a time, round-robin, so a pid
  recycled between two scrapes is still found within a few scrapes.
- An empty environment is not an answer yet: a process caught between fork and exec
  shows one for a moment. It is read again at the next ``ENV_RETRIES`` scans (kernel
  threads, which never have one, are not).
- A job's CPU seconds only grow while the job has processes here: a process that exits
  leaves its last CPU time in the job's total. A job with no live process is dropped.

On Linux this reads ``/proc`` directly (psutil needs about four times as long here);
elsewhere it goes through psutil.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

import psutil

logger = logging.getLogger(__name__)

JOB_ENV = "DCSCHED_JOB_ID"
TEAM_ENV = "DCSCHED_TEAM"
VERIFY_PER_SCAN = 16
ENV_RETRIES = 3  # scans that read an empty environment again (a process mid-exec)
MAX_OPEN_FILES = 512  # job processes whose stat file stays open between scans
KTHREADD = 2  # Linux kernel threads are kthreadd (pid 2) and its children

JobKey = tuple[str, str]  # (job, team)


class ProcStat(NamedTuple):  # a tuple: made per job process per scrape
    start: float  # the process's start time, in whatever unit the reader uses
    cpu_seconds: float  # user + system, of this process only
    rss_bytes: int
    ppid: int


class _ProcFs:
    """Reads /proc/<pid>/stat and /proc/<pid>/environ (Linux).

    The stat file of a watched process (a job's) stays open: one ``pread`` a scrape
    instead of open, read and close. An open file keeps naming the process it was opened
    for: once that process is gone, reading it fails (ESRCH) even if the pid was reused.
    """

    def __init__(self, root: str = "/proc"):
        self.root = root
        self.tick = float(os.sysconf("SC_CLK_TCK"))
        self.page = int(os.sysconf("SC_PAGE_SIZE"))
        self._open: dict[int, int] = {}  # pid -> fd of its stat file

    def watch(self, pid: int) -> None:
        if pid in self._open or len(self._open) >= MAX_OPEN_FILES:
            return
        with contextlib.suppress(OSError):  # gone already: the next scan forgets it
            self._open[pid] = os.open(f"{self.root}/{pid}/stat", os.O_RDONLY)

    def release(self, pid: int) -> None:
        fd = self._open.pop(pid, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        for pid in list(self._open):
            self.release(pid)

    def __del__(self) -> None:
        self.close()

    def _read(self, path: str, whole: bool) -> bytes | None:
        # os.open/os.read: half the time of open() here, and this runs per process.
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:  # gone, or another user's process
            return None
        try:
            chunks = [os.read(fd, 4096)]
            while whole and chunks[-1]:
                chunks.append(os.read(fd, 65536))
        except OSError:
            return None
        finally:
            os.close(fd)
        return b"".join(chunks)

    def pids(self) -> list[int]:
        return [int(name) for name in os.listdir(self.root) if name.isdigit()]

    def stat(self, pid: int) -> ProcStat | None:
        fd = self._open.get(pid)
        if fd is None:
            raw = self._read(f"{self.root}/{pid}/stat", whole=False)  # one line, < 1 KiB
        else:
            try:
                raw = os.pread(fd, 4096, 0)
            except OSError:  # that process is gone (the pid may live on in another)
                self.release(pid)
                return None
        if raw is None:
            return None
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = raw[raw.rfind(b")") + 2 :].split(None, 22)  # up to rss, no further
        try:
            return ProcStat(
                float(fields[19]),  # starttime, clock ticks after boot
                (int(fields[11]) + int(fields[12])) / self.tick,  # utime + stime
                int(fields[21]) * self.page,  # rss, pages
                int(fields[1]),  # ppid
            )
        except (IndexError, ValueError):
            return None

    def environ(self, pid: int) -> dict[str, str] | None:
        raw = self._read(f"{self.root}/{pid}/environ", whole=True)
        if raw is None:
            return None
        env: dict[str, str] = {}
        for item in raw.split(b"\0"):
            key, sep, value = item.partition(b"=")
            if sep:
                env[key.decode(errors="replace")] = value.decode(errors="replace")
        return env


class _Psutil:
    """The same reads through psutil, for systems without /proc."""

    def pids(self) -> list[int]:
        return list(psutil.pids())

    def watch(self, pid: int) -> None:
        pass

    def release(self, pid: int) -> None:
        pass

    def close(self) -> None:
        pass

    def stat(self, pid: int) -> ProcStat | None:
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                times = proc.cpu_times()
                rss = proc.memory_info().rss
                return ProcStat(proc.create_time(), times.user + times.system, rss, proc.ppid())
        except (psutil.Error, OSError):
            return None

    def environ(self, pid: int) -> dict[str, str] | None:
        try:
            return dict(psutil.Process(pid).environ())
        except (psutil.Error, OSError):
            return None


def attribution(env: dict[str, str] | None) -> JobKey | None:
    """The (job, team) a process's environment names, if it names both."""
    if not env:
        return None
    job, team = env.get(JOB_ENV, ""), env.get(TEAM_ENV, "")
    return (job, team) if job and team else None


@dataclass
class _Entry:
    start: float
    job: JobKey | None
    cpu_seconds: float = 0.0
    rss_bytes: int = 0
    env_tries_left: int = 0  # an empty environment is read again this many scans


@dataclass
class JobProcesses:
    """One job's live processes on this node at the last scan."""

    job: str
    team: str
    pids: list[int] = field(default_factory=list)
    cpu_seconds: float = 0.0  # of its live processes, plus those that exited here
    rss_bytes: int = 0


class ProcessTable:
    """The attribution cache and the per-job totals; ``scan()`` once per scrape."""

    def __init__(self, use_procfs: bool | None = None, proc_root: str = "/proc"):
        if use_procfs is None:
            use_procfs = os.path.isdir(f"{proc_root}/self")
        self._reader: _ProcFs | _Psutil = _ProcFs(proc_root) if use_procfs else _Psutil()
        self._entries: dict[int, _Entry] = {}
        self._unverified: deque[tuple[int, float]] = deque()  # no job's; oldest check first
        self._exited_cpu: dict[JobKey, float] = {}
        self._env_pending: set[int] = set()  # pids whose environment read back empty
        self.environ_reads = 0  # how many environments were read (tests check the cache)
        self.pid_of_job: dict[int, JobKey] = {}

    def scan(self, pids: Iterable[int] | None = None) -> dict[JobKey, JobProcesses]:
        alive = set(self._reader.pids() if pids is None else pids)
        for pid in [pid for pid in self._entries if pid not in alive]:
            self._forget(pid)
        self._read_pending_environments()
        for pid in alive:
            if pid not in self._entries:
                self._learn(pid)
        self._verify_some()
        jobs: dict[JobKey, JobProcesses] = {}
        for pid, entry in list(self._entries.items()):
            if entry.job is None:
                continue
            stat = self._reader.stat(pid)
            if stat is None:  # exited since the listing
                self._forget(pid)
                continue
            if stat.start != entry.start:  # a recycled pid: a new process
                self._forget(pid)
                self._learn(pid)
                continue
            entry.cpu_seconds, entry.rss_bytes = stat.cpu_seconds, stat.rss_bytes
        for pid, entry in self._entries.items():
            if entry.job is None:
                continue
            usage = jobs.get(entry.job)
            if usage is None:
                usage = jobs[entry.job] = JobProcesses(*entry.job)
            usage.pids.append(pid)
            usage.cpu_seconds += entry.cpu_seconds
            usage.rss_bytes += entry.rss_bytes
        for key in [key for key in self._exited_cpu if key not in jobs]:
            del self._exited_cpu[key]  # the job has no process here any more
        for key, usage in jobs.items():
            usage.cpu_seconds += self._exited_cpu.get(key, 0.0)
            usage.pids.sort()
        self.pid_of_job = {pid: e.job for pid, e in self._entries.items() if e.job is not None}
        return jobs

    def _learn(self, pid: int) -> None:
        stat = self._reader.stat(pid)
        if stat is None:
            return
        self.environ_reads += 1
        env = self._reader.environ(pid)
        job = attribution(env)
        entry = _Entry(stat.start, job)
        if env == {} and KTHREADD not in (pid, stat.ppid):
            # Empty: a process caught between fork and exec shows an empty environment
            # for a moment (as does one started with none); look again next scans.
            entry.env_tries_left = ENV_RETRIES
            self._env_pending.add(pid)
        if job is not None:
            # The job's counter starts from the process's CPU time so far.
            entry.cpu_seconds, entry.rss_bytes = stat.cpu_seconds, stat.rss_bytes
            self._reader.watch(pid)
        else:
            self._unverified.append((pid, stat.start))
        self._entries[pid] = entry

    def _read_pending_environments(self) -> None:
        for pid in list(self._env_pending):
            entry = self._entries.get(pid)
            if entry is None or entry.job is not None or entry.env_tries_left <= 0:
                self._env_pending.discard(pid)
                continue
            entry.env_tries_left -= 1
            self.environ_reads += 1
            job = attribution(self._reader.environ(pid))
            stat = self._reader.stat(pid)
            if stat is None or stat.start != entry.start:
                continue  # gone or recycled: the listing will sort it out
            if job is not None:
                entry.job = job
                entry.cpu_seconds, entry.rss_bytes = stat.cpu_seconds, stat.rss_bytes
                self._env_pending.discard(pid)
                self._reader.watch(pid)

    def close(self) -> None:
        """Closes the files kept open; a later scan opens them again."""
        self._reader.close()

    def _forget(self, pid: int) -> None:
        self._env_pending.discard(pid)
        self._reader.release(pid)
        entry = self._entries.pop(pid, None)
        if entry is not None and entry.job is not None:
            self._exited_cpu[entry.job] = self._exited_cpu.get(entry.job, 0.0) + entry.cpu_seconds

    def _verify_some(self) -> None:
        for _ in range(min(VERIFY_PER_SCAN, len(self._unverified))):
            pid, start = self._unverified.popleft()
            entry = self._entries.get(pid)
            if entry is None or entry.start != start or entry.job is not None:
                continue  # gone, learned again (and queued again), or a job's now
            stat = self._reader.stat(pid)
            if stat is None:
                self._forget(pid)
            elif stat.start != entry.start:
                logger.debug("pid %s was recycled; reading its environment again", pid)
                self._forget(pid)
                self._learn(pid)
            else:
                self._unverified.append((pid, start))
