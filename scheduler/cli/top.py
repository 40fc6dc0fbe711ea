"""``dcsched top``: a live terminal view of nodes, GPUs, running jobs and the queue.

Each frame is built from three API calls (``/v1/nodes``, running and pending jobs) by
the pure ``render`` function, and drawn in place on the terminal's alternate screen
(like ``top``), every ``--interval`` seconds until Ctrl-C. ``--once`` prints one frame
and exits (for scripts, or a terminal without cursor control).

Beside what each running job was allocated it shows what it measurably uses: the node
exporters report GPU memory, GPU share and CPU time of the job's processes (``usage``
of ``/v1/nodes``); "-" where no exporter reports (or no GPU is there to measure).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import click

from dcsched.cli.base import _client
from dcsched.cli.format import _table
from dcsched.core.units import format_bytes, format_duration

ENTER_ALT_SCREEN = "\x1b[?1049h\x1b[?25l"
LEAVE_ALT_SCREEN = "\x1b[?25h\x1b[?1049l"
HOME = "\x1b[H"
CLEAR_TO_END = "\x1b[J"
CLEAR_LINE_END = "\x1b[K"


def _num(value: Any) -> str:
    if value is None:
        return "-"
    number = float(value)
    return f"{number:g}" if number == int(number) else f"{number:.1f}"


def _percent(ratio: Any) -> str:
    return "-" if ratio is None else f"{100 * float(ratio):.0f}%"


def _bytes(value: Any) -> str:
    return "-" if value is None else format_bytes(int(value))


def _short(node_id: str) -> str:
    return node_id[:12]


def _since(iso: str | None, now: float) -> str:
    if not iso:
        return "-"
    started = datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    return format_duration(max(0.0, now - started))


def _job_usage(nodes: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Measured use per job, summed over the nodes whose exporters report it."""
    used: dict[str, dict[str, float]] = {}
    for node in nodes:
        for job in (node.get("usage") or {}).get("jobs") or ():
            total = used.setdefault(str(job["job"]), {})
            for key in ("gpu_memory_used_bytes", "cpu_seconds", "memory_rss_bytes"):
                if job.get(key) is not None:
                    total[key] = total.get(key, 0.0) + float(job[key])
            if job.get("gpu_utilization_ratio") is not None:
                total["gpu_utilization_ratio"] = max(
                    total.get("gpu_utilization_ratio", 0.0), float(job["gpu_utilization_ratio"])
                )
    return used


def render(
    nodes: Sequence[Mapping[str, Any]],
    running: Sequence[Mapping[str, Any]],
    pending: Sequence[Mapping[str, Any]],
    now: float,
    max_rows: int = 20,
) -> str:
    """One frame of ``dcsched top`` as text."""
    alive = [n for n in nodes if n.get("alive")]
    total = {k: sum(float(n["total"].get(k, 0)) for n in alive) for k in ("cpus", "gpus")}
    free = {k: sum(float(n["available"].get(k, 0)) for n in alive) for k in ("cpus", "gpus")}
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = [
        f"dcsched top  {stamp}   nodes {len(alive)}/{len(nodes)} alive   "
        f"GPUs {_num(total['gpus'] - free['gpus'])}/{_num(total['gpus'])} allocated   "
        f"CPUs {_num(total['cpus'] - free['cpus'])}/{_num(total['cpus'])} allocated   "
        f"running {len(running)}   pending {len(pending)}",
        "",
        "NODES",
    ]
    node_rows = []
    gpu_rows = []
    for node in nodes:
        usage = node.get("usage") or {}
        node_rows.append(
            (
                _short(str(node["id"])),
                "up" if node.get("alive") else "DOWN",
                f"{_num(node['total']['gpus'] - node['available']['gpus'])}/"
                f"{_num(node['total']['gpus'])}",
                f"{_num(node['total']['cpus'] - node['available']['cpus'])}/"
                f"{_num(node['total']['cpus'])}",
                _percent(usage.get("cpu_utilization_ratio")),
                f"{_bytes(usage.get('memory_used_bytes'))}/{_bytes(usage.get('memory_total_bytes'))}"
                if usage
                else "-",
                len(node.get("jobs") or ()),
            )
        )
        for gpu in usage.get("gpus") or ():
            gpu_rows.append(
                (
                    _short(str(node["id"])),
                    gpu.get("index"),
                    gpu.get("model"),
                    _percent(gpu.get("utilization_ratio")),
                    f"{_bytes(gpu.get('memory_used_bytes'))}/{_bytes(gpu.get('memory_total_bytes'))}",
                    "-"
                    if gpu.get("temperature_celsius") is None
                    else f"{gpu['temperature_celsius']:.0f}C",
                    "-" if gpu.get("power_watts") is None else f"{gpu['power_watts']:.0f}W",
                )
            )
    lines.append(
        _table(
            ["NODE", "STATE", "GPU ALLOC", "CPU ALLOC", "CPU USED", "MEMORY USED", "JOBS"],
            node_rows[:max_rows],
        )
    )
    if gpu_rows:
        lines += ["", "GPUS"]
        lines.append(
            _table(["NODE", "GPU", "MODEL", "UTIL", "MEMORY", "TEMP", "POWER"], gpu_rows[:max_rows])
        )
    elif any((n.get("usage") or {}) for n in nodes):
        lines += ["", "GPUS  none measured (no NVML on the nodes that report)"]
    used = _job_usage(nodes)
    lines += ["", "RUNNING"]
    job_rows = []
    for job in running:
        measured = used.get(str(job["id"]), {})
        resources = job["resources"]
        progress = job.get("progress") or {}
        job_rows.append(
            (
                job["id"],
                job["team"],
                job["state"],
                _num(resources["workers"] * resources["gpus"]),
                _percent(measured.get("gpu_utilization_ratio")),
                _bytes(measured.get("gpu_memory_used_bytes")),
                _num(resources["workers"] * resources["cpus"]),
                _num(measured.get("cpu_seconds")),
                _bytes(measured.get("memory_rss_bytes")),
                _since(job.get("started_at") or job.get("admitted_at"), now),
                progress.get("epoch", _rows_progress(progress)),
                "-" if progress.get("loss") is None else f"{progress['loss']:.4f}",
            )
        )
    lines.append(
        _table(
            [
                "JOB",
                "TEAM",
                "STATE",
                "GPUS",
                "GPU USED",
                "GPU MEM",
                "CPUS",
                "CPU-S USED",
                "RSS",
                "FOR",
                "EPOCH",
                "LOSS",
            ],
            job_rows[:max_rows],
        )
    )
    lines += ["", "QUEUE"]
    queue = sorted(pending, key=lambda j: (j.get("position") is None, j.get("position") or 0))
    lines.append(
        _table(
            ["POS", "JOB", "TEAM", "PRIORITY", "GPUS", "WAITING", "REASON"],
            [
                (
                    job.get("position"),
                    job["id"],
                    job["team"],
                    job.get("priority"),
                    _num(job["resources"]["workers"] * job["resources"]["gpus"]),
                    _since(job.get("submitted_at"), now),
                    job.get("reason"),
                )
                for job in queue[:max_rows]
            ],
        )
    )
    hidden = max(0, len(queue) - max_rows)
    if hidden:
        lines.append(f"... and {hidden} more pending (`dcsched list --state PENDING`)")
    return "\n".join(lines)


def _frame(max_rows: int) -> str:
    client = _client()
    nodes = client.nodes()
    running = client.list_jobs(state="RUNNING", limit=max_rows * 5)
    running += client.list_jobs(state="ADMITTED", limit=max_rows * 5)
    running = [j for j in running if j.get("kind") != "tune"]  # holds nothing; trials do
    pending = client.list_jobs(state="PENDING", limit=1000)
    return render(nodes, running, pending, time.time(), max_rows)


@click.command()
@click.option("--interval", type=click.FloatRange(min=0.2), default=2.0, show_default=True)
@click.option("--once", is_flag=True, help="Print one frame and exit.")
@click.option("--rows", type=click.IntRange(min=1), default=20, show_default=True)
def top(interval: float, once: bool, rows: int) -> None:
    """Live view of nodes, GPUs, running jobs and the queue (Ctrl-C to quit)."""
    if once:
        click.echo(_frame(rows))
        return
    click.echo(ENTER_ALT_SCREEN, nl=False)
    try:
        while True:
            text = _frame(rows)
            lines = text.split("\n")
            body = "\n".join(line + CLEAR_LINE_END for line in lines)
            click.echo(HOME + body + "\n" + CLEAR_TO_END, nl=False)
            time.sleep(interval)
    except KeyboardInterrupt:
        pass
    finally:
        click.echo(LEAVE_ALT_SCREEN, nl=False)


def _rows_progress(progress: dict[str, Any]) -> str:
    """An infer job's progress: rows done (of all) and rows/s; "-" for other jobs."""
    done, total = progress.get("rows_done"), progress.get("rows_total")
    if not isinstance(done, int):
        return "-"
    speed = progress.get("rows_per_s")
    rate = f" {speed:,.0f}/s" if isinstance(speed, int | float) else ""
    return f"{done:,}/{total:,} rows{rate}" if isinstance(total, int) else f"{done:,} rows{rate}"
