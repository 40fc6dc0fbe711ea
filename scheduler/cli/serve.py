"""``dcsched serve``: deployments of registered models, each behind one URL.

\b
dcsched serve MODEL[:VERSION] --name NAME --team T --replicas N [--cpus C --gpus G ...]
dcsched serve apply FILE            (a kind: serve spec)
dcsched serve list | status NAME
dcsched serve update NAME --model MODEL:VERSION     (rolling, one replica at a time)
dcsched serve scale NAME --replicas N
dcsched serve stop NAME

Each replica is a job (``dcsched list`` shows them, kind ``serve``), admitted within the
team's quota and placed like any job. Loaded lazily (``LAZY_COMMANDS``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from dcsched.cli.base import BadInput, _client, _output_option, _print_json
from dcsched.cli.format import _node_list, _table


class _ServeGroup(click.Group):
    """``dcsched serve MODEL ...`` creates; ``dcsched serve SUBCOMMAND ...`` does the rest."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            return "create", self.commands["create"], args
        return super().resolve_command(ctx, args)


@click.group(cls=_ServeGroup, context_settings={"help_option_names": ["-h", "--help"]})
def serve() -> None:
    """Serve a registered model: replicas scheduled as jobs, behind one load-balanced URL.

    \b
    dcsched serve MODEL[:VERSION] --name NAME --team T --replicas N
    dcsched serve list | status NAME | update NAME --model M:V | scale NAME --replicas N
    dcsched serve stop NAME
    """


@serve.command("create", hidden=True)
@click.argument("model")
@click.option("--name", required=True, help="Deployment name (lower-case letters, digits, -).")
@click.option("--team", required=True, help="The team whose quota the replicas use.")
@click.option("--replicas", type=int, default=1, show_default=True)
@click.option("--min", "min_replicas", type=int, default=None, help="Autoscaling floor.")
@click.option("--max", "max_replicas", type=int, default=None, help="Autoscaling ceiling.")
@click.option("--cpus", type=float, default=1.0, show_default=True, help="CPUs per replica.")
@click.option("--gpus", type=float, default=0.0, show_default=True, help="GPUs per replica.")
@click.option("--memory", default="1GiB", show_default=True, help="Memory per replica.")
@click.option("--priority", default="normal", show_default=True, help="Priority class.")
@click.option(
    "--placement",
    type=click.Choice(["spread", "binpack", "least-loaded"]),
    default="spread",
    show_default=True,
)
@_output_option
def create(
    model: str,
    name: str,
    team: str,
    replicas: int,
    min_replicas: int | None,
    max_replicas: int | None,
    cpus: float,
    gpus: float,
    memory: str,
    priority: str,
    placement: str,
    output: str,
) -> None:
    """Create a deployment of MODEL[:VERSION]; print its URL."""
    section: dict[str, Any] = {"model": model, "replicas": replicas}
    if min_replicas is not None:
        section["min_replicas"] = min_replicas
    if max_replicas is not None:
        section["max_replicas"] = max_replicas
    spec = {
        "name": name,
        "kind": "serve",
        "team": team,
        "priority": priority,
        "placement": placement,
        "resources": {"cpus": cpus, "gpus": gpus, "memory": memory},
        "serve": section,
    }
    _created(_client().request("POST", "/v1/deployments", body={"spec": spec}), output)


@serve.command("apply")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@_output_option
def apply(file: Path, output: str) -> None:
    """Create a deployment from a kind: serve spec file."""
    from dcsched.cli.jobs import _read_spec

    spec = _read_spec(file)
    if spec.get("kind") != "serve":
        raise BadInput(f"{file} is a kind: {spec.get('kind')} spec; `dcsched submit` runs it")
    _created(_client().request("POST", "/v1/deployments", body={"spec": spec}), output)


def _created(view: dict[str, Any], output: str) -> None:
    if output == "json":
        _print_json(view)
    else:
        click.echo(view["url"])


@serve.command("list")
@_output_option
def list_(output: str) -> None:
    """Deployments: URL, model version, replicas ready/wanted, request rate."""
    views = _client().request("GET", "/v1/deployments").get("deployments", [])
    if output == "json":
        _print_json(views)
        return
    rows = [
        (
            v["name"],
            v["team"],
            v["state"],
            f"{v['model']}:{v['version']}",
            f"{v['ready']}/{v['replicas']}",
            f"{v['request_rate']}/s",
            v["url"],
        )
        for v in views
    ]
    click.echo(_table(["NAME", "TEAM", "STATE", "MODEL", "READY", "RATE", "URL"], rows))


@serve.command("status")
@click.argument("name")
@_output_option
def status(name: str, output: str) -> None:
    """One deployment and its replicas (job, state, node, balancer state, requests)."""
    view = _client().request("GET", f"/v1/deployments/{name}")
    if output == "json":
        _print_json(view)
        return
    click.echo(f"deployment {view['name']} ({view['state']}), team {view['team']}")
    click.echo(f"  url:      {view['url']}")
    click.echo(f"  model:    {view['model']}:{view['version']} ({view['plugin']})")
    scaling = f"{view['ready']} ready of {view['replicas']} wanted"
    if view["min_replicas"] != view["max_replicas"]:
        scaling += f" (autoscaling {view['min_replicas']}..{view['max_replicas']})"
    click.echo(f"  replicas: {scaling}")
    click.echo(
        f"  requests: {view['request_rate']}/s now, {view['requests']} in all, "
        f"{view['responses_5xx']} answered 5xx"
    )
    if view.get("message"):
        click.echo(f"  note:     {view['message']}")
    rows = [
        (
            m["job"],
            m["state"],
            _node_list([m["node"]] if m["node"] else []),
            m["version"],
            m["balancer"] or "-",
            m["endpoint"] or "-",
            m["in_flight"],
            f"{m['request_rate']}/s",
            m["reason"] or "",
        )
        for m in view["members"]
    ]
    if rows:
        headers = ["REPLICA", "STATE", "NODE", "VER", "LB", "ENDPOINT", "INFLIGHT", "RATE", "WHY"]
        click.echo(_table(headers, rows, indent=2))


@serve.command("update")
@click.argument("name")
@click.option("--model", required=True, help="MODEL[:VERSION] to roll onto.")
def update(name: str, model: str) -> None:
    """Replace the replicas one by one with another model version (no request fails)."""
    view = _client().request("POST", f"/v1/deployments/{name}/update", body={"model": model})
    click.echo(f"{view['name']}: rolling onto {view['model']}:{view['version']}")


@serve.command("scale")
@click.argument("name")
@click.option("--replicas", type=int, required=True)
def scale(name: str, replicas: int) -> None:
    """Change the number of replicas."""
    view = _client().request("POST", f"/v1/deployments/{name}/scale", body={"replicas": replicas})
    click.echo(f"{view['name']}: {view['replicas']} replicas wanted")


@serve.command("stop")
@click.argument("name")
def stop(name: str) -> None:
    """Stop a deployment: its replicas end and its URL closes."""
    view = _client().request("POST", f"/v1/deployments/{name}/stop")
    click.echo(f"{view['name']}: stopped")
