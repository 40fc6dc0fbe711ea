"""The cluster configuration (``dcsched.yaml``): teams and their quotas, cohorts, fair-share
weights, priority classes, and the queueing and placement policies in force.

One schema, used by the live scheduler (``dcsched config apply FILE`` and at start) and by
the simulator. Without a file, the defaults below apply: priority ordering, binpack
placement, the three default priority classes, and teams without quotas.

Words:
- nominal quota: what a team is guaranteed; ``None`` for a resource means unlimited.
- cohort: a set of teams that lend each other their unused nominal quota.
- borrowing limit: the most a team may use beyond its nominal quota (``None``: no limit
  beyond what its cohort can lend). lending limit: the most of a team's unused quota that
  others may borrow (``None``: all of it).
- weight: a team's fair-share weight; under ``fair`` queueing a team with weight 2 gets
  twice the dominant share of one with weight 1.
- node type: ``nodes:`` lists nodes as counts of identical ones, for the simulator
  (``dcsched sim``); the live scheduler takes its nodes from Ray and ignores the list.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError, model_validator

from dcsched.core.resources import EPSILON, Resources
from dcsched.core.spec import (
    SLUG_PATTERN,
    DurationSeconds,
    LabelKey,
    LabelValue,
    MemoryBytes,
    SpecError,
    StrictModel,
    check_document_size,
    describe_validation_error,
    load_yaml_mapping,
)
from dcsched.core.units import parse_memory

QueueingPolicy = Literal["fifo", "priority", "fair"]
PlacementPolicy = Literal["binpack", "spread", "least-loaded"]
GPU_TYPE_LABEL = "dcsched.io/gpu-type"
DEFAULT_MAX_UPLOAD = 100 * 1024**2


def _optional_memory(value: Any) -> Any:
    return None if value is None else parse_memory(value)


OptionalMemory = Annotated[int | None, BeforeValidator(_optional_memory)]

# Bounds on every number of the configuration: finite (StrictModel) and far beyond any real
# cluster, so that sums and products of them stay finite and exact enough.
MAX_CPUS = 10_000_000.0
MAX_GPUS = 1_000_000.0
MAX_WEIGHT = 1_000_000.0
MAX_PRIORITY = 10**9
MAX_HALF_LIFE_S = 366 * 24 * 3600.0
GpuCount = Annotated[float, Field(ge=0, le=MAX_GPUS)]


class Quota(StrictModel):
    """An amount of each resource; ``None`` means unlimited."""

    cpus: float | None = Field(None, ge=0, le=MAX_CPUS)
    gpus: float | None = Field(None, ge=0, le=MAX_GPUS)
    memory: OptionalMemory = Field(None, ge=0)
    gpu_types: dict[LabelValue, GpuCount] = Field(
        default_factory=dict,
        max_length=256,
        description="GPUs per GPU type (node label dcsched.io/gpu-type), within `gpus`.",
    )

    def caps(self) -> Resources:
        """The quota as a Resources value, unlimited components as infinity."""
        inf = float("inf")
        return Resources(
            cpus=inf if self.cpus is None else self.cpus,
            gpus=inf if self.gpus is None else self.gpus,
            memory=2**62 if self.memory is None else self.memory,
        )


class PriorityClass(StrictModel):
    name: str = Field(pattern=SLUG_PATTERN)
    value: int = Field(ge=-MAX_PRIORITY, le=MAX_PRIORITY)
    preemptible: bool = Field(True, description="Whether jobs of this class may be preempted.")
    opt_out: bool = Field(
        False,
        description="Whether a job of this (preemptible) class may say `preemptible: false`.",
    )


class Team(StrictModel):
    name: str = Field(pattern=SLUG_PATTERN)
    cohort: str | None = Field(None, pattern=SLUG_PATTERN)
    weight: float = Field(1.0, gt=0, le=MAX_WEIGHT)
    quota: Quota = Field(default_factory=lambda: Quota())
    borrowing_limit: Quota | None = None
    lending_limit: Quota | None = None


class Queueing(StrictModel):
    policy: QueueingPolicy = "priority"
    backfill: bool = Field(False, description="Let later jobs start if they delay no one.")
    preemption: bool = Field(True, description="Let higher priority and reclaims preempt.")
    fair_share_half_life: DurationSeconds = Field(
        6 * 3600.0,
        le=MAX_HALF_LIFE_S,
        description="Half-life of past usage under `fair` queueing (e.g. 6h).",
    )


class NodeType(StrictModel):
    """``count`` identical nodes (simulator only; the live scheduler asks Ray)."""

    type: str = Field(pattern=SLUG_PATTERN, description="A name for this kind of node.")
    count: int = Field(ge=1, le=1_000_000)
    cpus: float = Field(gt=0, le=MAX_CPUS)
    gpus: float = Field(0.0, ge=0, le=MAX_GPUS)
    memory: MemoryBytes
    gpu_type: str | None = Field(
        None, min_length=1, max_length=253, description=f"Sets the node label {GPU_TYPE_LABEL}."
    )
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=64)
    team: str | None = Field(
        None,
        pattern=SLUG_PATTERN,
        description="A team these nodes are dedicated to: a partition of its own when the "
        "simulator runs with --partition (as Philly's virtual clusters were).",
    )

    def node_labels(self) -> dict[str, str]:
        labels = dict(self.labels)
        if self.gpu_type is not None:
            labels[GPU_TYPE_LABEL] = self.gpu_type
        return labels


DEFAULT_PRIORITY_CLASSES = (
    PriorityClass(name="low", value=0, preemptible=True),
    PriorityClass(name="normal", value=100, preemptible=True),
    PriorityClass(name="high", value=1000, preemptible=False),
)


class ClusterConfig(StrictModel):
    queueing: Queueing = Field(default_factory=lambda: Queueing())
    placement: PlacementPolicy = "binpack"
    priority_classes: tuple[PriorityClass, ...] = Field(DEFAULT_PRIORITY_CLASSES, max_length=256)
    teams: tuple[Team, ...] = Field((), max_length=10_000)
    unlisted_teams: Literal["allow", "reject"] | None = Field(
        None,
        description="allow: a team not listed runs without quota (weight 1, no cohort); "
        "reject: it is refused. Default: reject once a team is listed, else allow.",
    )
    nodes: tuple[NodeType, ...] = Field(
        (),
        max_length=10_000,
        description="Nodes as counts of node types, for the simulator; ignored live.",
    )
    data_roots: tuple[Annotated[str, Field(max_length=4096)], ...] = Field(
        (),
        max_length=64,
        description="Absolute folders on storage every node mounts whose files a spec may "
        "name by path (after symlinks are resolved); anything else must be uploaded.",
    )
    max_upload: MemoryBytes = Field(
        DEFAULT_MAX_UPLOAD,
        description="Largest upload (a data file, or a working_dir packed as a zip).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> ClusterConfig:
        problems = []
        for root in self.data_roots:
            if not root.startswith("/"):
                problems.append(f"data_roots: {root!r} must be an absolute path")
        names = [c.name for c in self.priority_classes]
        if len(set(names)) != len(names):
            problems.append("priority_classes: names must be unique")
        if "normal" not in names:
            problems.append("priority_classes: a class named 'normal' is required (the default)")
        teams = [t.name for t in self.teams]
        if len(set(teams)) != len(teams):
            problems.append("teams: names must be unique")
        for team in self.teams:
            quota = team.quota
            typed = sum(quota.gpu_types.values())
            if quota.gpus is not None and typed > quota.gpus + EPSILON:
                problems.append(
                    f"teams.{team.name}.quota: gpu_types add up to {typed:g}, "
                    f"more than gpus ({quota.gpus:g})"
                )
        types = [n.type for n in self.nodes]
        if len(set(types)) != len(types):
            problems.append("nodes: node type names must be unique")
        for node_type in self.nodes:
            if node_type.team is not None and node_type.team not in teams:
                problems.append(
                    f"nodes.{node_type.type}.team: {node_type.team!r} is not a listed team"
                )
            label = node_type.labels.get(GPU_TYPE_LABEL)
            if label is not None and node_type.gpu_type is not None and label != node_type.gpu_type:
                problems.append(
                    f"nodes.{node_type.type}: gpu_type {node_type.gpu_type!r} and label "
                    f"{GPU_TYPE_LABEL}={label!r} disagree"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # -- lookups -------------------------------------------------------------------------

    def priority_class(self, name: str) -> PriorityClass | None:
        return next((c for c in self.priority_classes if c.name == name), None)

    def unlisted_policy(self) -> Literal["allow", "reject"]:
        """What happens to a team not listed. A configuration *document* (``parse_config``)
        that lists teams and does not say gets ``reject``; one built in code, ``allow``."""
        return self.unlisted_teams or "allow"

    def team(self, name: str) -> Team | None:
        """The team's settings; an unlisted team gets defaults if unlisted teams are allowed."""
        found = next((t for t in self.teams if t.name == name), None)
        if found is None and self.unlisted_policy() == "allow":
            return Team(name=name)
        return found


def parse_config(document: Any) -> ClusterConfig:
    if document is None:
        return ClusterConfig()
    if not isinstance(document, dict):
        raise SpecError([f"the configuration must be a mapping, not a {type(document).__name__}"])
    check_document_size(document, "the configuration", max_bytes=16 * 1024**2)
    try:
        config = ClusterConfig.model_validate(document)
    except ValidationError as exc:
        raise SpecError(describe_validation_error(exc)) from None
    if config.unlisted_teams is None and config.teams:
        # Once teams are listed, a team nobody listed is refused unless the file says
        # `unlisted_teams: allow`: no one invents a team to escape every quota.
        config = config.model_copy(update={"unlisted_teams": "reject"})
    return config


def load_config_yaml(text: str) -> ClusterConfig:
    return parse_config(load_yaml_mapping(text))
