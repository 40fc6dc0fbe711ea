"""``dcsched sim``: the command. ``dcsched sim --trace FILE --format F --cluster FILE ...``
replays a trace; ``dcsched sim compare DIR...`` compares runs. See docs/sim.md."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from dcsched.cli import BadInput, Failure
from dcsched.core.config import load_config_yaml
from dcsched.core.spec import SpecError
from dcsched.sim.engine import SimError, SimOptions, Simulation
from dcsched.sim.trace import FORMATS, TraceError, read_trace

_CONTEXT = {"help_option_names": ["-h", "--help"]}


@click.group(invoke_without_command=True, context_settings=_CONTEXT)
@click.option("--trace", "trace_file", type=click.Path(path_type=Path), help="Trace file (CSV).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), help="Trace format.")
@click.option(
    "--cluster",
    "cluster_file",
    type=click.Path(path_type=Path),
    help="Cluster file: the dcsched.yaml schema with a `nodes:` section.",
)
@click.option("--policy", type=click.Choice(["fifo", "priority", "fair"]), help="Queueing policy.")
@click.option(
    "--placement",
    type=click.Choice(["binpack", "spread", "least-loaded"]),
    help="Placement policy.",
)
@click.option("--backfill/--no-backfill", default=None, help="EASY backfill.")
@click.option("--preemption/--no-preemption", default=None, help="Priority and reclaim.")
@click.option(
    "--borrowing/--no-borrowing",
    default=None,
    help="Cohort borrowing between teams (--no-borrowing drops every cohort).",
)
@click.option(
    "--partition",
    is_flag=True,
    help="Nodes dedicated to a team (node type `team:`) form its own partition and queue.",
)
@click.option(
    "--load-factor",
    type=float,
    default=1.0,
    show_default=True,
    help="Compress arrival times by this factor (2: jobs arrive twice as fast).",
)
@click.option(
    "--slowdown",
    type=float,
    default=1.0,
    show_default=True,
    help="Run-time factor of a job whose gang spans nodes (unless its trace row says).",
)
@click.option(
    "--lookahead",
    type=int,
    default=32,
    show_default=True,
    help="Pending jobs of each team a pass considers.",
)
@click.option(
    "--pass-interval",
    type=float,
    default=0.0,
    show_default=True,
    help="Seconds between passes (0: a pass at every arrival and end).",
)
@click.option(
    "--predictor/--no-predictor",
    default=True,
    show_default=True,
    help="Estimate run times from each team's ended jobs (for backfill).",
)
@click.option(
    "--predictor-quantile",
    type=float,
    default=0.5,
    show_default=True,
    help="Quantile of the team's past run times used as the estimate.",
)
@click.option("--out", type=click.Path(path_type=Path), help="Write jobs.csv and summary.json.")
@click.option("--limit", type=int, help="Replay only the first N jobs by submit time.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a TTY).")
@click.pass_context
def sim(ctx: click.Context, /, **kw: Any) -> None:
    """Replay a cluster trace through dcsched's own scheduling policies.

    \b
    dcsched sim --trace philly.csv --format philly \\
        --cluster examples/clusters/philly-helios.yaml --policy fair --out runs/fair
    dcsched sim compare runs/fifo runs/fair
    """
    if ctx.invoked_subcommand is not None:
        return
    missing = [
        f"--{n}"
        for n, k in (("trace", "trace_file"), ("format", "fmt"), ("cluster", "cluster_file"))
        if not kw[k]
    ]
    if missing:
        raise BadInput(f"missing {', '.join(missing)}; see `dcsched sim --help`")
    run(**kw)


def run(
    trace_file: Path,
    fmt: str,
    cluster_file: Path,
    out: Path | None,
    limit: int | None,
    progress: bool | None,
    **options: Any,
) -> None:
    try:
        text = cluster_file.read_text()
    except OSError as exc:
        raise BadInput(f"cannot read {cluster_file}: {exc.strerror or exc}") from None
    try:
        config = load_config_yaml(text)
    except SpecError as exc:
        raise BadInput(f"{cluster_file} is not a valid cluster file", exc.problems) from None
    try:
        trace = read_trace(trace_file, fmt)
    except TraceError as exc:
        raise BadInput(str(exc)) from None
    jobs = sorted(trace.jobs, key=lambda j: (j.submit, j.id))
    if limit is not None:
        if limit < 1:
            raise BadInput("--limit must be at least 1")
        jobs = jobs[:limit]
    try:
        simulation = Simulation(jobs, config, SimOptions(**options))
    except SimError as exc:
        raise BadInput(str(exc)) from None
    show = sys.stderr.isatty() if progress is None else progress
    began = time.perf_counter()
    if show:
        with click.progressbar(
            length=len(jobs), label="replaying", file=sys.stderr, show_pos=True
        ) as bar:
            result = simulation.run(progress=bar.update)
    else:
        result = simulation.run()
    wall = time.perf_counter() - began
    from dcsched.sim import report

    info = {
        "file": trace_file.name,
        "format": fmt,
        "rows_used": len(trace.jobs),
        "replayed": len(jobs),
        "skipped_rows": dict(sorted(trace.skipped.items())),
        "simplified_rows": dict(sorted(trace.notes.items())),
        "cluster_file": cluster_file.name,
    }
    data = report.write(result, out, info) if out is not None else report.summary(result, info)
    for line in _lines(data):
        click.echo(line)
    click.echo(f"wall_s {wall:.1f}", err=True)
    if out is not None:
        click.echo(f"wrote {out / 'jobs.csv'}, {out / 'summary.json'}, {out / 'utilization.csv'}")


def _lines(data: dict[str, Any]) -> list[str]:
    keys = (
        "jobs",
        "mean_jct_s",
        "median_jct_s",
        "p99_jct_s",
        "mean_wait_s",
        "mean_run_s",
        "makespan_s",
        "gpu_utilization",
        "jain_fairness",
        "preemptions",
        "unschedulable",
    )
    lines = [f"{key:16} {data[key]}" for key in keys]
    for entry in data["unschedulable_reasons"]:
        lines.append(f"  unschedulable: {entry['jobs']} job(s): {entry['reason']}")
    for reason, n in data["trace"]["skipped_rows"].items():
        lines.append(f"  trace rows skipped: {n}: {reason}")
    return lines


@sim.command(context_settings=_CONTEXT)
@click.argument("dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--png",
    type=click.Path(path_type=Path),
    default=Path("sim-compare.png"),
    show_default=True,
    help="Where to write the picture (JCT CDFs, utilisation over time).",
)
def compare(dirs: tuple[Path, ...], png: Path) -> None:
    """Compare simulation outputs: a table, and a PNG of JCT CDFs and utilisation."""
    from dcsched.sim.compare import CompareError, load, plot, table

    try:
        runs = [load(d) for d in dirs]
    except CompareError as exc:
        raise BadInput(str(exc)) from None
    click.echo(table(runs))
    try:
        plot(runs, png)
    except ImportError as exc:
        raise Failure(f"the picture needs matplotlib ({exc})") from None
    except OSError as exc:
        raise Failure(f"cannot write {png}: {exc.strerror or exc}") from None
    click.echo(f"wrote {png}")
