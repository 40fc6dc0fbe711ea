"""Trace readers: Philly, Alibaba's 2023 GPU trace, and dcsched's own CSV format.

Each reader turns a file into ``TraceJob`` values (what a user asked for, when, and how
long the job ran) and counts, by reason, the rows it could not use: a row is never
dropped silently. Times are seconds; the simulator moves them so the first submission
is at 0.

Words:
- duration: how long the job ran in the trace, undisturbed on one node. The simulator
  never shows it to a policy (no oracle run times); it only decides when the job ends.
- workers None: the trace gives a job's total GPUs only; the simulator shapes it into a
  gang that fills whole nodes (``shape``).
"""

from __future__ import annotations

import csv
import datetime as dt
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dcsched.core.config import NodeType
from dcsched.core.spec import SLUG_PATTERN
from dcsched.core.units import parse_duration, parse_memory

FORMATS = ("philly", "alibaba2023", "dcsched")
GiB = 1024**3
MiB = 1024**2

# Philly gives GPUs only: each GPU comes with this much CPU and memory (small enough that
# GPUs are what binds on 8-GPU nodes of 64 CPUs and 512 GiB).
PHILLY_CPUS_PER_GPU = 1.0
PHILLY_MEMORY_PER_GPU = GiB
ALIBABA_PRIORITY = {"BE": "low", "LS": "normal", "Burstable": "normal", "Guaranteed": "high"}
ALIBABA_TEAM = "openb"


class TraceError(ValueError):
    """The trace cannot be read at all (missing file, wrong columns)."""


@dataclass(frozen=True, slots=True)
class TraceJob:
    """One job of a trace. Resources are per worker; ``workers`` None means "shape it"."""

    id: str
    team: str
    submit: float
    duration: float
    gpus: float
    cpus: float
    memory: int
    workers: int | None = None
    gpu_type: str | None = None
    priority: str = "normal"
    max_runtime: float | None = None
    """A limit the user gave: the job is stopped (FAILED) when it runs longer."""
    slowdown: float | None = None
    """How much slower the job runs when its gang spans nodes; None: the run's default."""
    preemptible: bool | None = None


@dataclass
class Trace:
    jobs: list[TraceJob]
    skipped: Counter[str] = field(default_factory=Counter)
    """Rows not turned into jobs, by reason."""
    notes: Counter[str] = field(default_factory=Counter)
    """Rows used with a simplification, by what was simplified."""


def read_trace(path: Path, fmt: str) -> Trace:
    if fmt not in FORMATS:
        raise TraceError(f"unknown trace format {fmt!r}; known: {', '.join(FORMATS)}")
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise TraceError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise TraceError(f"{path} is not a CSV file: {exc}") from None
    reader = {"philly": _philly, "alibaba2023": _alibaba, "dcsched": _dcsched}[fmt]
    trace = Trace([])
    for job in reader(rows, trace, path):
        trace.jobs.append(job)
    if not trace.jobs:
        why = ", ".join(f"{n} {r}" for r, n in sorted(trace.skipped.items())) or "no rows"
        raise TraceError(f"{path} holds no usable job ({why})")
    return trace


def _need(rows: list[dict[str, str]], path: Path, columns: tuple[str, ...]) -> None:
    have = set(rows[0]) if rows else set()
    missing = [c for c in columns if c not in have]
    if rows and missing:
        raise TraceError(f"{path} lacks the column(s) {', '.join(missing)}")


# -- Philly ---------------------------------------------------------------------------------


def _philly(rows: list[dict[str, str]], trace: Trace, path: Path) -> Iterator[TraceJob]:
    """``timestamp,duration,num_gpus,gpu_time,cluster``; each VC (``cluster``) is a team."""
    _need(rows, path, ("timestamp", "duration", "num_gpus", "cluster"))
    for i, row in enumerate(rows):
        try:
            when = dt.datetime.fromisoformat(row["timestamp"])
            submit = when.replace(tzinfo=dt.UTC).timestamp()
            duration = float(row["duration"])
            gpus = int(row["num_gpus"])
        except (TypeError, ValueError):
            trace.skipped["unreadable timestamp, duration or num_gpus"] += 1
            continue
        team = (row["cluster"] or "").strip()
        if not _slug(team):
            trace.skipped["no virtual cluster"] += 1
            continue
        if not math.isfinite(duration) or duration <= 0 or gpus <= 0:
            trace.skipped["no run time or no GPUs"] += 1
            continue
        yield TraceJob(
            id=f"philly-{i:05d}",
            team=team,
            submit=submit,
            duration=duration,
            gpus=float(gpus),
            cpus=PHILLY_CPUS_PER_GPU * gpus,
            memory=PHILLY_MEMORY_PER_GPU * gpus,
        )


# -- Alibaba 2023 ---------------------------------------------------------------------------


def _alibaba(rows: list[dict[str, str]], trace: Trace, path: Path) -> Iterator[TraceJob]:
    """openb_pod_list_*.csv: one pod is a one-worker job of team ``openb``; ``gpu_milli``
    makes fractional GPUs, ``gpu_spec`` a GPU-type selector, ``qos`` a priority class
    (BE low, LS and Burstable normal, Guaranteed high). Run time: scheduled to deleted."""
    _need(
        rows,
        path,
        ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli", "creation_time"),
    )
    for row in rows:
        if not (row.get("scheduled_time") or "").strip():
            trace.skipped["never scheduled in the trace, so no run time"] += 1
            continue
        try:
            created = float(row["creation_time"])
            scheduled = float(row["scheduled_time"])
            deleted = float(row["deletion_time"])
            cpus = int(row["cpu_milli"]) / 1000
            memory = int(row["memory_mib"]) * MiB
            num_gpu = int(row["num_gpu"])
            milli = int(row["gpu_milli"] or 0)
        except (KeyError, TypeError, ValueError):
            trace.skipped["unreadable numbers"] += 1
            continue
        duration = deleted - scheduled
        if duration <= 0:
            trace.skipped["no run time (deleted when scheduled)"] += 1
            continue
        if cpus <= 0 or memory <= 0:
            trace.skipped["no CPUs or no memory"] += 1
            continue
        gpus = num_gpu * milli / 1000 if num_gpu == 1 else float(num_gpu)
        spec = (row.get("gpu_spec") or "").strip()
        gpu_type = None
        if spec:
            if "|" in spec:
                trace.notes["GPU-type alternatives (any of several) not expressible: none"] += 1
            else:
                gpu_type = spec
        qos = (row.get("qos") or "").strip()
        yield TraceJob(
            id=row["name"],
            team=ALIBABA_TEAM,
            submit=created,
            duration=duration,
            gpus=gpus,
            cpus=cpus,
            memory=memory,
            workers=1,
            gpu_type=gpu_type,
            priority=ALIBABA_PRIORITY.get(qos, "normal"),
        )


def alibaba_node_types(path: Path) -> list[NodeType]:
    """The node list (``sn,cpu_milli,memory_mib,gpu,model``) as counts of node types."""
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise TraceError(f"cannot read {path}: {exc.strerror or exc}") from None
    counts: Counter[tuple[int, int, int, str]] = Counter()
    for row in rows:
        key = (int(row["cpu_milli"]), int(row["memory_mib"]), int(row["gpu"]), row["model"])
        counts[key] += 1
    types = []
    for (cpu_milli, memory_mib, gpus, model), count in sorted(
        counts.items(), key=lambda kv: (kv[0][3], kv[0][2], kv[0][0], kv[0][1])
    ):
        name = f"{model.lower()}-{gpus}gpu-{cpu_milli // 1000}cpu-{memory_mib // 1024}gib"
        types.append(
            NodeType(
                type=name,
                count=count,
                cpus=cpu_milli / 1000,
                gpus=gpus,
                memory=memory_mib * MiB,
                gpu_type=model,
            )
        )
    return types


# -- dcsched --------------------------------------------------------------------------------

DCSCHED_COLUMNS = (
    "id",
    "team",
    "submit",
    "duration",
    "workers",
    "gpus",
    "cpus",
    "memory",
    "gpu_type",
    "priority",
    "max_runtime",
    "slowdown",
    "preemptible",
)


def _dcsched(rows: list[dict[str, str]], trace: Trace, path: Path) -> Iterator[TraceJob]:
    """See docs/sim.md: per-worker resources as in a job spec, plus submit and duration."""
    _need(rows, path, ("team", "submit", "duration"))
    unknown = [c for c in (rows[0] if rows else {}) if c not in DCSCHED_COLUMNS]
    if unknown:
        raise TraceError(
            f"{path}: unknown column(s) {', '.join(unknown)}; known: {', '.join(DCSCHED_COLUMNS)}"
        )
    seen: set[str] = set()
    for i, row in enumerate(rows, start=2):
        try:
            job = _dcsched_row(row, i)
        except ValueError as exc:
            raise TraceError(f"{path}, line {i}: {exc}") from None
        if job.id in seen:
            raise TraceError(f"{path}, line {i}: job id {job.id!r} appears twice")
        seen.add(job.id)
        yield job


def _dcsched_row(row: dict[str, str], line: int) -> TraceJob:
    def text(name: str) -> str:
        return (row.get(name) or "").strip()

    def number(name: str, default: float) -> float:
        value = text(name)
        if not value:
            return default
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{name} {value!r} is not a number") from None

    def seconds(name: str) -> float | None:
        value = text(name)
        return None if not value else parse_duration(value)

    team = text("team")
    if not _slug(team):
        raise ValueError(f"team {team!r} must be lower-case letters, digits and '-'")
    submit = seconds("submit")
    duration = seconds("duration")
    if submit is None or duration is None:
        raise ValueError("submit and duration are required")
    workers = int(number("workers", 1))
    gpus, cpus = number("gpus", 0.0), number("cpus", 1.0)
    memory = parse_memory(text("memory") or "1GiB")
    if workers < 1 or gpus < 0 or cpus <= 0 or duration <= 0 or submit < 0:
        raise ValueError("workers and cpus must be positive, gpus >= 0, submit >= 0, duration > 0")
    slowdown = number("slowdown", 0.0) or None
    if slowdown is not None and slowdown < 1:
        raise ValueError(f"slowdown {slowdown:g} must be at least 1")
    preemptible = text("preemptible").lower()
    if preemptible not in ("", "true", "false"):
        raise ValueError(f"preemptible {preemptible!r} must be true, false or empty")
    return TraceJob(
        id=text("id") or f"job-{line - 1:06d}",
        team=team,
        submit=submit,
        duration=duration,
        gpus=gpus,
        cpus=cpus,
        memory=memory,
        workers=workers,
        gpu_type=text("gpu_type") or None,
        priority=text("priority") or "normal",
        max_runtime=seconds("max_runtime"),
        slowdown=slowdown,
        preemptible=None if not preemptible else preemptible == "true",
    )


def _slug(name: str) -> bool:
    import re

    return bool(re.match(SLUG_PATTERN, name))


# -- shaping --------------------------------------------------------------------------------


def shape(job: TraceJob, node_gpus: float) -> tuple[int, float, float, int]:
    """(workers, CPUs, GPUs, memory per worker): a job given as totals is consolidated on
    the fewest nodes of ``node_gpus`` GPUs, in equal workers (24 GPUs on 8-GPU nodes: 3
    workers of 8; 12: 2 of 6), as Philly's jobs were placed."""
    if job.workers is not None:
        return job.workers, job.cpus, job.gpus, job.memory
    if node_gpus <= 0 or job.gpus <= node_gpus:
        return 1, job.cpus, job.gpus, job.memory
    workers = math.ceil(job.gpus / node_gpus)
    while job.gpus % workers:
        workers += 1
    return workers, job.cpus / workers, job.gpus / workers, job.memory // workers
