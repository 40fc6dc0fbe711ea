"""Access commands: tokens (create, list, revoke) and the audit log."""

from __future__ import annotations

import click

from dcsched.cli.base import _client, _output_option, _print_json, cli
from dcsched.cli.format import _table

ROLES = ["member", "viewer", "admin", "metrics"]


@cli.group()
def tokens() -> None:
    """API tokens: one per person or service, with a role (admin only)."""


@tokens.command("create")
@click.argument("name")
@click.option("--team", default=None, help="The member's team (required for --role member).")
@click.option(
    "--role", type=click.Choice(ROLES), default="member", show_default=True,
    help="member: its team's jobs; viewer: reads all; metrics: /metrics only; admin: all.",
)  # fmt: skip
@_output_option
def tokens_create(name: str, team: str | None, role: str, output: str) -> None:
    """Issue a token to NAME and print it (once: only its hash is kept)."""
    created = _client().create_token(name, role, team)
    if output == "json":
        _print_json(created)
        return
    click.echo(created["token"])
    who = f"{role} of team {team}" if team else role
    click.echo(
        f"issued a token to {name} ({who}); it is shown only now: hand it over as "
        "DCSCHED_TOKEN, and revoke it with `dcsched tokens revoke "
        f"{name}`",
        err=True,
    )


@tokens.command("list")
@click.option("--all", "include_revoked", is_flag=True, help="Revoked tokens too.")
@_output_option
def tokens_list(include_revoked: bool, output: str) -> None:
    """List the principals holding tokens (never the tokens)."""
    found = _client().tokens(include_revoked)
    if output == "json":
        _print_json(found)
        return
    rows = [
        [
            t.get("name"),
            t.get("role"),
            t.get("team") or "-",
            "bootstrap ($DCSCHED_HOME/token)" if t.get("bootstrap") else t.get("created_at"),
            t.get("revoked_at") or "-",
        ]
        for t in found
    ]
    click.echo(_table(["NAME", "ROLE", "TEAM", "CREATED", "REVOKED"], rows))


@tokens.command("revoke")
@click.argument("name")
def tokens_revoke(name: str) -> None:
    """Revoke NAME's token; it is refused from the next call on."""
    _client().revoke_token(name)
    click.echo(f"revoked the token of {name}")


@cli.command()
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@_output_option
def audit(limit: int, output: str) -> None:
    """The audit log: who changed what, from where, when, and the outcome (newest first)."""
    entries = _client().audit(limit)
    if output == "json":
        _print_json(entries)
        return
    rows = [
        [e.get("at"), e.get("principal"), e.get("action"), e.get("object"), e.get("remote"),
         e.get("outcome")]
        for e in entries
    ]  # fmt: skip
    headers = ["AT", "PRINCIPAL", "ACTION", "OBJECT", "REMOTE", "OUTCOME"]
    click.echo(_table(headers, rows) if rows else "no audit entries")
