"""``kind: serve``: a deployment of a registered model version behind one URL.

A ``kind: serve`` spec describes a *deployment*; ``dcsched serve`` (or ``dcsched submit``
of such a file) hands it to the deployment controller (``dcsched.serving.controller``),
which turns it into one job per replica. Each replica job carries the same spec with
``serve.deployment`` (the deployment's name) and ``serve.version`` (the version pinned
when the deployment was created or updated) filled in; the scheduler admits, places and
accounts it like any other job, and its Ray job runs the replica server
(``dcsched.serving.replica``) until the deployment is stopped.

Words: *deployment* (a name, a model version, a replica count, one entry URL);
*replica* (one job of a deployment: one worker that loads the model and serves HTTP).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from dcsched.core.spec import DurationSeconds, SchedulingRequest, StrictModel

MODEL_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
MAX_REPLICAS = 64


def parse_model_ref(text: str) -> tuple[str, int | None]:
    """``NAME`` or ``NAME:VERSION`` -> (name, version or None for the latest); ValueError
    saying what is wrong."""
    name, sep, version = text.partition(":")
    if not MODEL_NAME.match(name):
        raise ValueError(
            f"model {text!r}: the name must be lower-case letters, digits and '-' "
            "(a registered model, see `dcsched models list`), optionally :VERSION"
        )
    if not sep:
        return name, None
    if not version.isdigit() or int(version) < 1 or len(version) > 9:
        raise ValueError(f"model {text!r}: the version after ':' must be a number from 1")
    return name, int(version)


class ServeSpec(StrictModel):
    model: str = Field(
        max_length=80,
        description="A registered model: NAME (its latest version) or NAME:VERSION.",
    )
    replicas: int = Field(1, ge=0, le=MAX_REPLICAS, description="Replicas to run.")
    min_replicas: int | None = Field(
        None, ge=0, le=MAX_REPLICAS, description="Autoscaling floor (default: replicas)."
    )
    max_replicas: int | None = Field(
        None, ge=1, le=MAX_REPLICAS, description="Autoscaling ceiling (default: replicas)."
    )
    target_in_flight: float = Field(
        4.0,
        gt=0,
        le=10_000,
        description="Autoscaling target: requests in flight per replica.",
    )
    scale_down_after: DurationSeconds = Field(
        30.0,
        gt=0,
        le=86_400,
        description="Autoscaling: how long (e.g. 30s, 5m) the requests in flight stay below "
        "target before one replica is removed.",
    )
    deployment: str | None = Field(
        None,
        pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
        description="Set by dcsched on each replica job: the deployment it belongs to.",
    )
    version: int | None = Field(
        None, ge=1, description="Set by dcsched on each replica job: the pinned version."
    )

    @field_validator("model")
    @classmethod
    def _model_ref(cls, value: str) -> str:
        parse_model_ref(value)
        return value

    @model_validator(mode="after")
    def _bounds(self) -> ServeSpec:
        high = self.max_replicas
        if high is None:
            high = max(self.replicas, self.min_replicas or 0, 1)
        low = self.min_replicas if self.min_replicas is not None else min(self.replicas, high)
        if low > high:
            raise ValueError(f"min_replicas ({low}) is above max_replicas ({high})")
        if not low <= self.replicas <= high and self.replicas != 0:
            raise ValueError(
                f"replicas ({self.replicas}) must lie between min_replicas ({low}) and "
                f"max_replicas ({high})"
            )
        return self

    @property
    def model_name(self) -> str:
        return parse_model_ref(self.model)[0]

    @property
    def model_version(self) -> int | None:
        return self.version or parse_model_ref(self.model)[1]


class ServeJobSpec(SchedulingRequest):
    """A deployment (or, with ``serve.deployment`` set, one of its replicas)."""

    kind: Literal["serve"] = Field(description="Serve a registered model over HTTP.")
    serve: ServeSpec

    @model_validator(mode="after")
    def _one_worker(self) -> ServeJobSpec:
        if self.resources.workers != 1:
            raise ValueError(
                "resources.workers: a replica is one worker; set serve.replicas for more"
            )
        return self
