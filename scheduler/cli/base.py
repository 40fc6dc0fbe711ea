"""The `dcsched` group and what every command shares: errors in words, the API client,
`-o json` output."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Sequence
from typing import Any

import click

from dcsched import __version__
from dcsched.client import ApiError, Client, ServerUnreachable
from dcsched.core.lifecycle import TERMINAL_STATES, JobState
from dcsched.paths import Paths

BAD_INPUT_STATUSES = frozenset({400, 404, 411, 413, 422})
_CLIENT_KEY = "dcsched.client"
_STATES = [state.value for state in JobState]
_TERMINAL = frozenset(state.value for state in TERMINAL_STATES)


class Failure(click.ClickException):
    """A failure the CLI reports as ``error: ...`` on stderr; exit code 1."""

    exit_code = 1

    def __init__(self, message: str, problems: Sequence[str] = ()):
        super().__init__(message)
        self.problems = list(problems)

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)
        for problem in self.problems:
            click.echo(f"  - {problem}", err=True)


class BadInput(Failure):
    """Bad input from the user (a local file, or HTTP 400/404/411/413/422); exit code 2."""

    exit_code = 2


class _UsageError(click.UsageError):
    """click's usage error, shown as ``error: ...`` like every other error."""

    def show(self, file: Any = None) -> None:
        if self.ctx is not None:
            click.echo(self.ctx.get_usage(), err=True)
            click.echo(f"Try '{self.ctx.command_path} --help' for help.", err=True)
        click.echo(f"error: {self.message}", err=True)


def _restyled(exc: click.UsageError) -> click.UsageError:
    if isinstance(exc, _UsageError | click.exceptions.NoArgsIsHelpError):
        return exc  # already ours, or "no arguments: show the help"
    return _UsageError(exc.format_message(), exc.ctx)


# Commands that live in their own modules and are imported only when run, so that
# `dcsched list` never pays for them: name -> "module:attribute".
# Their one-line help is here too, so that ``dcsched --help`` imports none of them.
LAZY_COMMANDS = {
    "exporter": ("dcsched.exporters.cli:exporter", "Serve GPU and host metrics of this node."),
    "serve": ("dcsched.cli.serve:serve", "Serve a registered model behind one URL (replicas)."),
    "sim": ("dcsched.sim.cli:sim", "Replay a cluster trace through the scheduling policies."),
    "top": ("dcsched.cli.top:top", "Live view of nodes, GPUs, running jobs and the queue."),
}


class _Cli(click.Group):
    """Turns usage, API and connection errors of any command into ``error: ...``, and
    loads the commands of ``LAZY_COMMANDS`` on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in LAZY_COMMANDS:
            return super().get_command(ctx, cmd_name)
        target = LAZY_COMMANDS[cmd_name][0]
        module_name, _, attribute = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise Failure(f"`dcsched {cmd_name}` cannot be loaded here: {exc}") from None
        command = getattr(module, attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            if name in LAZY_COMMANDS:
                rows.append((name, LAZY_COMMANDS[name][1]))
                continue
            command = super().get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(formatter.width - 6 - len(name))))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise _restyled(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _restyled(exc) from None
        except ServerUnreachable as exc:
            raise Failure(str(exc)) from None
        except ApiError as exc:
            raise _api_failure(exc, ctx.meta.get(_CLIENT_KEY)) from None


def _api_failure(exc: ApiError, client: Client | None) -> Failure:
    if exc.status == 401:
        source = client.token_source if client else "the token file"
        if client is not None and client.token is None:
            why = f"no API token was found ({source} is missing or empty)"
        else:
            why = f"the server refused the API token from {source}"
        return Failure(
            f"{why}: {exc.message}; use the token of the running server "
            "(check DCSCHED_HOME, or restart it with `dcsched up`)",
        )
    if exc.status == 403:
        return Failure(f"not allowed: {exc.message}", exc.problems)
    kind = BadInput if exc.status in BAD_INPUT_STATUSES else Failure
    return kind(exc.message, exc.problems)


def _client() -> Client:
    ctx = click.get_current_context()
    client = ctx.meta.get(_CLIENT_KEY)
    if client is None:
        client = Client.from_env(Paths.from_env())
        ctx.meta[_CLIENT_KEY] = client
    return client


def _output_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "-o",
        "--output",
        type=click.Choice(["table", "json"]),
        default="table",
        show_default=True,
        help="Table for people, JSON (the API's objects) for scripts.",
    )(func)


def _print_json(value: Any) -> None:
    """Objects pretty-printed; lists one object per line (still one JSON document).

    ``indent`` switches json to its pure-Python encoder, which costs ~0.1 s for 1,000
    jobs; a line per object keeps the C encoder and stays readable and greppable.
    """
    if isinstance(value, list):
        if not value:
            click.echo("[]")
            return
        click.echo("[\n" + ",\n".join(json.dumps(item) for item in value) + "\n]")
        return
    click.echo(json.dumps(value, indent=2))


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dcsched")
def cli() -> None:
    """Schedule training jobs on a shared Ray cluster and watch them run."""
