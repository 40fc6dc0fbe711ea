"""``dcsched sim compare DIR...``: several runs side by side, as a table and a picture.

Reads each folder's summary.json, jobs.csv and utilization.csv (as ``report`` writes
them). The table's ``vs_first`` is the first run's mean JCT over this run's (2.0: this
run's jobs complete twice as fast on average). The PNG has two panels: the CDF of JCT
per run, on a log scale, and GPU utilisation over time. matplotlib is imported here
only, with the Agg backend (no display needed).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class CompareError(ValueError):
    pass


@dataclass
class Run:
    name: str
    summary: dict[str, Any]
    jct: list[float]
    utilization: list[tuple[float, float]]


def load(folder: Path) -> Run:
    try:
        summary = json.loads((folder / "summary.json").read_text())
        with (folder / "jobs.csv").open(newline="") as handle:
            jct = sorted(float(r["jct_s"]) for r in csv.DictReader(handle) if r["jct_s"])
        with (folder / "utilization.csv").open(newline="") as handle:
            util = [(float(r["time"]), float(r["utilization"])) for r in csv.DictReader(handle)]
    except FileNotFoundError as exc:
        raise CompareError(
            f"{folder} is not a simulation output (no {Path(exc.filename).name}); "
            "make one with `dcsched sim ... --out DIR`"
        ) from None
    except (OSError, ValueError, KeyError) as exc:
        raise CompareError(f"cannot read the simulation output in {folder}: {exc}") from None
    return Run(folder.name or str(folder), summary, jct, util)


COLUMNS = (
    ("run", lambda r, first: r.name),
    ("policy", lambda r, first: _policy(r.summary)),
    ("jobs", lambda r, first: str(r.summary.get("jobs"))),
    ("mean_jct_s", lambda r, first: _n(r.summary.get("mean_jct_s"))),
    ("median_jct_s", lambda r, first: _n(r.summary.get("median_jct_s"))),
    ("p99_jct_s", lambda r, first: _n(r.summary.get("p99_jct_s"))),
    ("mean_wait_s", lambda r, first: _n(r.summary.get("mean_wait_s"))),
    ("gpu_util", lambda r, first: _f(r.summary.get("gpu_utilization"))),
    ("jain", lambda r, first: _f(r.summary.get("jain_fairness"))),
    ("preempt", lambda r, first: str(r.summary.get("preemptions"))),
    ("unsched", lambda r, first: str(r.summary.get("unschedulable"))),
    ("vs_first", lambda r, first: _ratio(first.summary, r.summary)),
)


def _policy(summary: dict[str, Any]) -> str:
    o = summary.get("options", {})
    parts = [str(o.get("policy") or "config")]
    if o.get("backfill"):
        parts.append("backfill")
    if o.get("partition"):
        parts.append("partition")
    elif o.get("borrowing") is not False:
        parts.append("borrow")
    return "+".join(parts)


def _n(x: Any) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _f(x: Any) -> str:
    return "-" if x is None else f"{x:.3f}"


def _ratio(first: dict[str, Any], this: dict[str, Any]) -> str:
    a, b = first.get("mean_jct_s"), this.get("mean_jct_s")
    return "-" if not a or not b else f"{a / b:.2f}x"


def table(runs: list[Run]) -> str:
    rows = [[name for name, _ in COLUMNS]]
    rows += [[cell(run, runs[0]) for _, cell in COLUMNS] for run in runs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = []
    for row in rows:
        cells = [
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def plot(runs: list[Run], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (cdf, util) = plt.subplots(1, 2, figsize=(13, 5))
    for run in runs:
        n = len(run.jct)
        if n:
            cdf.plot(run.jct, [(i + 1) / n for i in range(n)], label=run.name)
        if run.utilization:
            t0 = run.utilization[0][0]
            util.plot(
                [(t - t0) / 86400 for t, _ in run.utilization],
                [u for _, u in run.utilization],
                label=run.name,
                linewidth=0.8,
            )
    cdf.set_xscale("log")
    cdf.set_xlabel("job completion time (s)")
    cdf.set_ylabel("fraction of jobs")
    cdf.set_title("JCT CDF")
    cdf.grid(True, alpha=0.3)
    cdf.legend(fontsize="small")
    util.set_xlabel("time since the first submission (days)")
    util.set_ylabel("GPUs allocated / all GPUs")
    util.set_title("GPU utilisation")
    util.set_ylim(0, 1.05)
    util.grid(True, alpha=0.3)
    util.legend(fontsize="small")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100, metadata={"Software": None})
    plt.close(fig)
