"""The ``dcsched`` command line: a thin click client over the HTTP API.

Invariants:
- Start-up stays light: ``dcsched --help`` and ``dcsched list`` import click, json, orjson
  and a socket client only (never ray, torch, pydantic, fastapi, uvicorn or yaml). ``submit``
  imports the YAML loader; ``server``/``up``/``down`` import ``dcsched.daemon``; both lazily
  (an import-linter contract in pyproject.toml and tests/unit/test_cli.py keep it so).
- Exit codes: 0 success; 2 bad input (invalid local file, HTTP 400/404/411/413/422); 1 any other
  failure (server unreachable, 401, 409, 5xx, a job that did not succeed, a timeout).
- Errors go to stderr as ``error: ...``, never as a traceback. ``submit`` prints only the
  job id on stdout, so ``JOB=$(dcsched submit job.yaml)`` works.
- ``-o json`` prints the API's objects unchanged (list commands print a JSON array).

Words: a job is *terminal* once SUCCEEDED, FAILED or CANCELLED (``dcsched.core.lifecycle``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from dcsched.cli import access, cluster, jobs, server, tuning  # noqa: F401  (add commands)
from dcsched.cli.base import BadInput, Failure, cli

__all__ = ["BadInput", "Failure", "cli", "main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point (``dcsched``)."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="dcsched")
    except BrokenPipeError:  # `dcsched list | head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)
