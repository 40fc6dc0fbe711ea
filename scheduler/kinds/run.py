"""``kind: run``: the user's own command, on one worker or a gang.

Each worker runs ``run.command`` in its own bundle of the job's placement group, with a
torchrun-compatible environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ...; see
``dcsched.runs.environment``) and ``run.env`` on top. ``run.working_dir`` is uploaded by
the CLI (``upload:sha256:HEX``, a zip) or lies under an admin-listed data root.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from dcsched.core.spec import SchedulingRequest, StrictModel

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
RESERVED_ENV = frozenset(
    {
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "GROUP_RANK",
        "MASTER_ADDR",
        "MASTER_PORT",
        "CUDA_VISIBLE_DEVICES",
    }
)
"""Set by dcsched for each rank; a spec may not override them (``DCSCHED_*`` neither)."""


class RunSpec(StrictModel):
    command: list[str] | str = Field(
        description="argv (a list, run as is) or a string run by /bin/sh -c.",
    )
    working_dir: str | None = Field(
        None,
        max_length=4096,
        description="Folder the command runs in, shipped to every worker. The CLI uploads a "
        "local folder; the server accepts upload:sha256:HEX or a path under a data root.",
    )
    env: dict[str, str] = Field(
        default_factory=dict, max_length=256, description="Extra environment variables."
    )

    @field_validator("command")
    @classmethod
    def _command_given(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, str):
            if not value.strip():
                raise ValueError("command is empty; give a program and its arguments")
            if len(value) > 65_536:
                raise ValueError("command is longer than 65536 characters")
            return value
        if not value or not value[0]:
            raise ValueError("command is empty; give a program and its arguments")
        if len(value) > 4096 or sum(len(arg) for arg in value) > 65_536:
            raise ValueError("command has more than 4096 arguments or 65536 characters")
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        problems = []
        for name, text in value.items():
            if not ENV_NAME.match(name):
                problems.append(f"{name!r} is not a variable name")
            elif name in RESERVED_ENV or name.startswith("DCSCHED_"):
                problems.append(f"{name} is set by dcsched for each worker")
            elif len(text) > 32_768:
                problems.append(f"{name} is longer than 32768 characters")
        if problems:
            raise ValueError("; ".join(problems))
        return value


class RunJobSpec(SchedulingRequest):
    """A job that runs the user's command on every worker of its gang."""

    kind: Literal["run"] = Field(description="Run a command on each worker.")
    run: RunSpec
