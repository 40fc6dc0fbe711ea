"""What a replay produced: per-job rows, a summary, and utilisation over time.

Files written in the output folder (byte-identical for identical inputs):
- ``jobs.csv``: one row per job of the trace, in submit order: id, team, gpus (all
  workers), workers, submit, start (first), end, wait_s (start - submit), jct_s (end -
  submit), run_s (time it held resources, over all its runs), nodes (spanned by its last
  run), preemptions, state (SUCCEEDED; FAILED when it outran a max_runtime the trace
  gave; UNSCHEDULABLE, never started: the core's ``Cancel`` or a job it could never
  admit) and reason.
- ``summary.json``: see ``summary``.
- ``utilization.csv``: allocated GPUs over time, averaged over equal bins.

Words:
- completed: SUCCEEDED or FAILED (it ran and ended); JCT and wait figures cover these.
- utilisation: allocated GPU-seconds over (all GPUs x makespan), makespan being the first
  submission to the last end.
- Jain's fairness across teams: (sum x)^2 / (n * sum x^2) over the teams with completed
  jobs, x being a team's mean of run_s / jct_s over its jobs (1: its jobs never wait;
  near 0: they mostly wait). 1 when every team waits in the same proportion.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections import Counter
from itertools import pairwise
from pathlib import Path
from typing import Any

from dcsched.sim.engine import JobRecord, SimResult

UTILIZATION_BINS = 500
JOB_COLUMNS = (
    "id",
    "team",
    "gpus",
    "workers",
    "submit",
    "start",
    "end",
    "wait_s",
    "jct_s",
    "run_s",
    "nodes",
    "preemptions",
    "state",
    "reason",
)


def _num(x: float | None) -> str:
    if x is None:
        return ""
    return f"{x:.3f}".rstrip("0").rstrip(".") if x != int(x) else str(int(x))


def _q(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def completed(records: list[JobRecord]) -> list[JobRecord]:
    return [r for r in records if r.end is not None and r.start is not None]


def jain(values: list[float]) -> float:
    if not values:
        return 1.0
    total = sum(values)
    squares = sum(v * v for v in values)
    return 1.0 if squares == 0 else total * total / (len(values) * squares)


def utilization_bins(
    timeline: list[tuple[float, float]], start: float, end: float, bins: int
) -> list[tuple[float, float]]:
    """(bin start, mean allocated GPUs in the bin) over [start, end]."""
    if end <= start or not timeline:
        return []
    width = (end - start) / bins
    sums = [0.0] * bins
    points = [*timeline, (end, 0.0)]
    for (t0, gpus), (t1, _) in pairwise(points):
        t0, t1 = max(t0, start), min(t1, end)
        if t1 <= t0 or gpus == 0:
            continue
        first, last = int((t0 - start) / width), min(int((t1 - start) / width), bins - 1)
        for b in range(first, last + 1):
            lo, hi = start + b * width, start + (b + 1) * width
            overlap = min(hi, t1) - max(lo, t0)
            if overlap > 0:
                sums[b] += gpus * overlap
    return [(start + b * width, sums[b] / width) for b in range(bins)]


def summary(result: SimResult, trace_info: dict[str, Any]) -> dict[str, Any]:
    done = completed(result.records)
    jct = [r.end - r.submit for r in done if r.end is not None]
    waits = [r.start - r.submit for r in done if r.start is not None]
    runs = [r.run_s for r in done]
    first = min((r.submit for r in result.records), default=0.0)
    last = max((r.end for r in done if r.end is not None), default=first)
    makespan = last - first
    gpu_seconds = sum(r.run_s * r.gpus for r in done)
    teams: dict[str, list[JobRecord]] = {}
    for r in done:
        teams.setdefault(r.team, []).append(r)
    ratios = {
        team: statistics.fmean(
            (r.run_s / (r.end - r.submit)) if r.end is not None and r.end > r.submit else 1.0
            for r in rs
        )
        for team, rs in sorted(teams.items())
    }
    unschedulable = [r for r in result.records if r.state == "UNSCHEDULABLE"]
    reasons = Counter(r.reason for r in unschedulable)
    return {
        "jobs": len(done),
        "jobs_in_trace": len(result.records),
        "succeeded": sum(r.state == "SUCCEEDED" for r in done),
        "failed_max_runtime": sum(r.state == "FAILED" for r in done),
        "unschedulable": len(unschedulable),
        "unschedulable_reasons": [
            {
                "reason": reason,
                "jobs": n,
                "examples": [r.trace.id for r in unschedulable if r.reason == reason][:5],
            }
            for reason, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
        "mean_jct_s": _round(statistics.fmean(jct)) if jct else None,
        "median_jct_s": _round(_q(jct, 0.5)) if jct else None,
        "p99_jct_s": _round(_q(jct, 0.99)) if jct else None,
        "mean_wait_s": _round(statistics.fmean(waits)) if waits else None,
        "median_wait_s": _round(_q(waits, 0.5)) if waits else None,
        "mean_run_s": _round(statistics.fmean(runs)) if runs else None,
        "makespan_s": _round(makespan),
        "gpu_utilization": _round(gpu_seconds / (result.total_gpus * makespan), 6)
        if makespan > 0 and result.total_gpus > 0
        else None,
        "jain_fairness": _round(jain(list(ratios.values())), 6),
        "preemptions": sum(r.preemptions for r in result.records),
        "preempted_jobs": sum(r.preemptions > 0 for r in result.records),
        "multi_node_jobs": sum(r.nodes > 1 for r in done),
        "teams": {
            team: {
                "jobs": len(rs),
                "mean_jct_s": _round(statistics.fmean(r.end - r.submit for r in rs if r.end)),
                "mean_wait_s": _round(
                    statistics.fmean(r.start - r.submit for r in rs if r.start is not None)
                ),
                "run_over_jct": _round(ratios[team], 6),
            }
            for team, rs in sorted(teams.items())
        },
        "cluster": {"nodes": result.total_nodes, "gpus": result.total_gpus},
        "partitions": result.partitions,
        "passes": result.passes,
        "options": result.options.describe(),
        "trace": trace_info,
    }


def _round(x: float, digits: int = 3) -> float:
    return round(x, digits) if math.isfinite(x) else x


def jobs_csv(records: list[JobRecord]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(JOB_COLUMNS)
    for r in sorted(records, key=lambda r: (r.submit, r.trace.id)):
        jct = None if r.end is None else r.end - r.submit
        wait = None if r.start is None else r.start - r.submit
        writer.writerow(
            [
                r.trace.id,
                r.team,
                _num(r.gpus),
                r.workers,
                _num(r.submit),
                _num(r.start),
                _num(r.end),
                _num(wait),
                _num(jct),
                _num(r.run_s) if r.start is not None else "",
                r.nodes if r.start is not None else "",
                r.preemptions,
                r.state,
                r.reason,
            ]
        )
    return out.getvalue()


def utilization_csv(result: SimResult) -> str:
    done = completed(result.records)
    first = min((r.submit for r in result.records), default=0.0)
    last = max((r.end for r in done if r.end is not None), default=first)
    out = io.StringIO()
    out.write("time,gpus_allocated,utilization\n")
    for t, gpus in utilization_bins(result.gpu_timeline, first, last, UTILIZATION_BINS):
        share = gpus / result.total_gpus if result.total_gpus else 0.0
        out.write(f"{_num(t)},{gpus:.3f},{share:.6f}\n")
    return out.getvalue()


def write(result: SimResult, out: Path, trace_info: dict[str, Any]) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    data = summary(result, trace_info)
    (out / "jobs.csv").write_text(jobs_csv(result.records))
    (out / "utilization.csv").write_text(utilization_csv(result))
    (out / "summary.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return data
