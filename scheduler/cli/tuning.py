"""Tuning commands: ``dcsched trials JOB`` (every trial of a tune job, as a table, JSON
or CSV; ``--plot DIR`` saves the study's plots), and the study lines of ``status``."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from dcsched.cli.base import BadInput, _client, _print_json, cli
from dcsched.cli.format import _table

PLOT_NAMES = ("history", "importances", "intermediate")


def study_lines(tuning: Mapping[str, Any] | None) -> list[tuple[str, Any]]:
    """The TRIALS and BEST fields of ``dcsched status`` for a tune job."""
    if not tuning:
        return []
    trials = (
        f"{tuning.get('done')} done, {tuning.get('running')} running, "
        f"{tuning.get('pruned')} pruned, {tuning.get('failed')} failed of {tuning.get('total')}"
        f" (at most {tuning.get('parallel')} at once)"
    )
    best = tuning.get("best")
    shown = None
    if isinstance(best, Mapping):
        params = json.dumps(best.get("params"), separators=(", ", ": "))
        shown = (
            f"{tuning.get('metric')} {best.get('value'):.4f} (trial {best.get('trial')}) {params}"
        )
    return [("TRIALS", trials), (f"BEST ({tuning.get('mode')})", shown or "-")]


@cli.command()
@click.argument("job_id", metavar="JOB")
@click.option(
    "-o",
    "--output",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
    help="Table for people, JSON or CSV for scripts.",
)
@click.option(
    "--plot",
    "plot_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also save the study's plots (history, importances, intermediate) as PNGs here.",
)
def trials(job_id: str, output: str, plot_dir: Path | None) -> None:
    """List every trial of a tune job: params, state, metric per epoch, node, duration."""
    client = _client()
    study = client.trials(job_id)
    rows = study.get("trials") or []
    if output == "json":
        _print_json(study)
    elif output == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(
            [
                "number",
                "state",
                "value",
                "params",
                "epochs",
                "pruned_at_epoch",
                "nodes",
                "duration_s",
                "job",
            ]
        )
        for row in rows:
            writer.writerow(
                [
                    row.get("number"),
                    row.get("state"),
                    row.get("value"),
                    json.dumps(row.get("params")),
                    json.dumps(row.get("epochs")),
                    row.get("pruned_at_epoch"),
                    " ".join(row.get("nodes") or []),
                    row.get("duration_s"),
                    row.get("job"),
                ]
            )
        click.echo(buffer.getvalue(), nl=False)
    else:
        metric = (study.get("summary") or {}).get("metric", "value")
        table = [
            [
                row.get("number"),
                row.get("state"),
                None if row.get("value") is None else f"{row['value']:.4f}",
                json.dumps(row.get("params"), separators=(",", ":")),
                len(row.get("epochs") or {}),
                row.get("pruned_at_epoch"),
                ",".join(n[:8] for n in row.get("nodes") or []),
                row.get("duration_s"),
            ]
            for row in rows
        ]
        headers = [
            "TRIAL",
            "STATE",
            metric.upper(),
            "PARAMS",
            "EPOCHS",
            "PRUNED AT",
            "NODE",
            "SECONDS",
        ]
        click.echo(_table(headers, table))
    if plot_dir is not None:
        try:
            plot_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BadInput(f"cannot create {plot_dir}: {exc.strerror}") from None
        for name in PLOT_NAMES:
            from dcsched.client import ApiError

            try:
                data = client.plot(job_id, name)
            except ApiError as exc:
                click.echo(f"{name}: not drawn ({exc.message})", err=True)
                continue
            target = plot_dir / f"{name}.png"
            target.write_bytes(data)
            click.echo(f"wrote {target}", err=True)
