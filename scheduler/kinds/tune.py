"""``kind: tune``: a hyper-parameter study whose trials are ordinary ``train`` jobs.

The payload is the three sections of a train job (``model``, ``data``, ``train``: the
base every trial starts from) plus ``tune:``. ``resources`` are those of *each trial*;
the tune job itself holds nothing (``dcsched.tuning`` drives it, see docs/tuning.md).

Words:
- dimension: one entry of ``tune.search_space``, keyed by the path it sets in a trial's
  spec: ``params.NAME`` (``model.params.NAME``) or ``train.NAME`` (a ``TrainSpec`` field);
  its value is exactly one of ``choice: [...]``, ``uniform: [low, high]``,
  ``loguniform: [low, high]`` or ``int: [low, high]`` (inclusive).
- metric: a validation metric the plugin reports (``f1``; ``val_f1`` is the same). It is
  read on the validation rows (``data.validation_size``, 0.2 by default and never 0 here),
  never on the test rows: per epoch for pruning and, when a trial ends, for choosing the
  best one; the test rows give the best trial's final metrics only.

What the schema checks here (shape, bounds, ``parallel <= trials``, grid only over
discrete dimensions) needs no plugin; ``check_tune`` adds what does (the paths exist and
each end of a range is a value the plugin accepts, the metric is reported).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from dcsched.core.job import job_id_of
from dcsched.core.spec import SchedulingRequest, StrictModel
from dcsched.kinds.train import VALIDATION_PREFIX, DataSpec, ModelSpec, TrainSpec

if TYPE_CHECKING:
    from dcsched.plugins.api import ModelPlugin

ALGORITHMS = ("tpe", "random", "grid", "cmaes", "hyperopt")
PRUNERS = ("asha", "hyperband", "median", "none")
DIMENSION_KINDS = ("choice", "uniform", "loguniform", "integer")
MAX_TRIALS = 10_000
MINIMIZED_METRICS = frozenset({"log_loss", "mse", "rmse", "mae", "loss"})
"""Metrics where lower is better (the default ``mode`` for them is ``min``)."""

JsonValue = Any


class Dimension(StrictModel):
    """One search-space dimension: exactly one of its four fields is set."""

    # merged with StrictModel's (extra fields refused, frozen, no inf or NaN)
    model_config = ConfigDict(
        validate_by_name=True, validate_by_alias=True, serialize_by_alias=True
    )

    choice: list[JsonValue] | None = Field(None, max_length=1000)
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    integer: tuple[int, int] | None = Field(None, alias="int")

    @model_serializer(mode="wrap")
    def _set_fields_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}

    @model_validator(mode="after")
    def _one_kind(self) -> Dimension:
        given = [_shown(k) for k in DIMENSION_KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of choice: [a, b, ...], uniform: [low, high], "
                f"loguniform: [low, high] or int: [low, high] (got {', '.join(given) or 'none'})"
            )
        if self.choice is not None and not self.choice:
            raise ValueError("choice is empty; list at least one value")
        bounds = self.uniform or self.loguniform or self.integer
        if bounds is not None:
            low, high = bounds
            if low >= high:
                raise ValueError(f"low {low} must be less than high {high}; write [low, high]")
            if self.loguniform is not None and low <= 0:
                raise ValueError(
                    f"loguniform needs low > 0 (got {low}); use uniform for a range from 0"
                )
        return self

    @property
    def kind(self) -> str:
        return _shown(next(k for k in DIMENSION_KINDS if getattr(self, k) is not None))

    @property
    def discrete(self) -> bool:
        return self.choice is not None or self.integer is not None

    def ends(self) -> list[JsonValue]:
        """The values a check must accept: every choice, or both ends of the range."""
        if self.choice is not None:
            return list(self.choice)
        bounds = self.uniform or self.loguniform or self.integer
        assert bounds is not None
        return [bounds[0], bounds[1]]

    def grid(self) -> list[JsonValue]:
        """Every value of a discrete dimension (grid search)."""
        if self.choice is not None:
            return list(self.choice)
        assert self.integer is not None
        return list(range(self.integer[0], self.integer[1] + 1))


def _shown(field: str) -> str:
    return "int" if field == "integer" else field


class TuneSettings(StrictModel):
    trials: int = Field(
        ge=1, le=MAX_TRIALS, description="Trials in all (a budget, never exceeded)."
    )
    parallel: int = Field(1, ge=1, le=1000, description="Most trials unfinished at once.")
    metric: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="Validation metric to optimise (f1, val_f1, accuracy, r2, ...); "
        "default: the plugin's objective.",
    )
    mode: Literal["max", "min"] | None = Field(
        None, description="max or min; default: the metric's own direction."
    )
    algorithm: Literal["tpe", "random", "grid", "cmaes", "hyperopt"] = Field(
        "tpe",
        description="Sampler: Optuna's TPE, random, grid, CMA-ES, or hyperopt (TPE with "
        "Hyperopt's settings).",
    )
    pruner: Literal["asha", "hyperband", "median", "none"] = Field(
        "asha", description="Early stopping on the per-epoch validation metric."
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed of the sampler.")
    search_space: dict[str, Dimension] = Field(
        default_factory=dict,
        max_length=64,
        description="params.NAME or train.NAME -> {choice|uniform|loguniform|int: ...}; "
        "default: the plugin's own search space.",
    )

    @field_validator("search_space")
    @classmethod
    def _paths(cls, value: dict[str, Dimension]) -> dict[str, Dimension]:
        bad = [p for p in value if not _path_parts(p)]
        if bad:
            raise ValueError(
                f"{', '.join(repr(p) for p in bad)}: a search-space key is params.NAME "
                "(a model parameter) or train.NAME (epochs, batch_size, optimizer, lr)"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TuneSettings:
        if self.parallel > self.trials:
            raise ValueError(
                f"parallel ({self.parallel}) is more than trials ({self.trials}); "
                "lower parallel or raise trials"
            )
        if self.algorithm == "grid":
            continuous = [p for p, d in self.search_space.items() if not d.discrete]
            if continuous:
                raise ValueError(
                    f"grid search needs discrete dimensions; {', '.join(continuous)} "
                    "is continuous: use choice: [...] or int: [low, high], or another algorithm"
                )
        return self


DEFAULT_TUNE_VALIDATION_SIZE = 0.2


class TuneDataSpec(DataSpec):
    """The data section of a tune job: a train job's, with a validation split required,
    so that neither pruning nor the choice of the best trial looks at the test rows."""

    validation_size: float = Field(
        DEFAULT_TUNE_VALIDATION_SIZE,
        ge=0,
        lt=1,
        description="Fraction of the rows held out for validation, on which trials are "
        "pruned and the best one chosen; above 0 (default 0.2). The test rows give the "
        "best trial's final metrics only.",
    )

    @field_validator("validation_size")
    @classmethod
    def _needs_validation(cls, value: float) -> float:
        if value <= 0:
            default = DEFAULT_TUNE_VALIDATION_SIZE
            raise ValueError(
                "a tune job prunes and picks its best trial on validation rows, apart from "
                f"the test rows: give validation_size above 0 (default {default})"
            )
        return value


class TuneJobSpec(SchedulingRequest):
    """A tuning study: the base train sections plus ``tune``; resources are per trial."""

    kind: Literal["tune"] = Field(description="Tune hyper-parameters; each trial is a train job.")
    model: ModelSpec
    data: TuneDataSpec
    train: TrainSpec = Field(default_factory=lambda: TrainSpec())
    tune: TuneSettings


def _path_parts(path: str) -> tuple[str, str] | None:
    section, sep, name = path.partition(".")
    if sep and section in ("params", "train") and name and "." not in name:
        return section, name
    return None


def plugin_space(plugin: ModelPlugin) -> dict[str, Dimension]:
    """The plugin's ``search_space()`` as dimensions over ``params.NAME``."""
    space: dict[str, Dimension] = {}
    for name, entry in plugin.search_space().items():
        kind = entry.get("type")
        if kind == "categorical":
            space[f"params.{name}"] = Dimension(choice=list(entry["choices"]))
        elif kind == "int":
            space[f"params.{name}"] = Dimension(integer=(int(entry["low"]), int(entry["high"])))
        else:
            key = "loguniform" if entry.get("log") else "uniform"
            bounds = (float(entry["low"]), float(entry["high"]))
            space[f"params.{name}"] = Dimension.model_validate({key: bounds})
    return space


def effective_space(spec: TuneJobSpec, plugin: ModelPlugin) -> dict[str, Dimension]:
    return dict(spec.tune.search_space) or plugin_space(plugin)


def apply_params(document: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a spec document (model/train sections) with ``values`` (path -> value)
    set: ``params.X`` into ``model.params.X``, ``train.X`` into ``train.X``."""
    model = dict(document.get("model") or {})
    params = dict(model.get("params") or {})
    train = dict(document.get("train") or {})
    for path, value in values.items():
        parts = _path_parts(path)
        if parts is None:
            raise ValueError(f"{path!r} is not a search-space path")
        section, name = parts
        (params if section == "params" else train)[name] = value
    model["params"] = params
    return {**document, "model": model, "train": train}


def metric_of(spec: TuneJobSpec, plugin: ModelPlugin, task: str | None) -> tuple[str, str]:
    """(metric name, "max"|"min") the study optimises; ValueError in words if the plugin
    does not report the metric (``task``: the data's task when known before loading)."""
    sets = dict(plugin.metrics)
    if task is not None and task in sets:
        sets = {task: sets[task]}
    reported = sorted({name for s in sets.values() for name in s.names})
    if spec.tune.metric is not None:
        name = spec.tune.metric.removeprefix(VALIDATION_PREFIX)
        if name not in reported:
            what = f" for {task} data" if task else ""
            raise ValueError(
                f"model type {plugin.name!r} does not report {spec.tune.metric!r}{what}; "
                f"it reports: {', '.join(reported)} (val_NAME is the same as NAME)"
            )
        objective = next((s for s in sets.values() if s.objective == name), None)
        default = (
            ("max" if objective.direction == "maximize" else "min")
            if objective is not None
            else ("min" if name in MINIMIZED_METRICS else "max")
        )
        return name, spec.tune.mode or default
    objectives = {(s.objective, s.direction) for s in sets.values()}
    if len(objectives) != 1:
        raise ValueError(
            f"model type {plugin.name!r} has no single objective for this data "
            f"({', '.join(sorted(o for o, _ in objectives))}); set tune.metric"
        )
    name, direction = objectives.pop()
    return name, spec.tune.mode or ("max" if direction == "maximize" else "min")


def check_tune(spec: TuneJobSpec, plugin: ModelPlugin, task: str | None) -> list[str]:
    """Problems of a tune spec that only the plugin can see; [] if none."""
    problems: list[str] = []
    space = effective_space(spec, plugin)
    if not space:
        problems.append(
            f"tune.search_space: model type {plugin.name!r} has no default search space; "
            "give tune.search_space (params.NAME or train.NAME)"
        )
    if spec.tune.algorithm == "grid":
        continuous = [p for p, d in space.items() if not d.discrete]
        if continuous:
            problems.append(
                f"tune.algorithm: grid search needs discrete dimensions; the plugin's "
                f"search space has continuous {', '.join(continuous)}: give a search_space"
            )
    known = {"params": set(plugin.params_model.model_fields), "train": set(TrainSpec.model_fields)}
    base = spec.model_dump(mode="json")
    for path, dimension in space.items():
        parts = _path_parts(path)
        assert parts is not None
        section, name = parts
        if name not in known[section]:
            what = f"parameter of {plugin.name}" if section == "params" else "train setting"
            problems.append(
                f"tune.search_space.{path}: unknown {what}; it takes: "
                f"{', '.join(sorted(known[section])) or 'none'}"
            )
            continue
        for value in dimension.ends():
            trial = apply_params(base, {path: value})
            problem = _refused(plugin, trial, section, name)
            if problem:
                problems.append(
                    f"tune.search_space.{path}: the value {value!r} is refused: {problem}"
                )
                break
    try:
        metric_of(spec, plugin, task)
    except ValueError as exc:
        problems.append(f"tune.metric: {exc}")
    return problems


def _refused(plugin: ModelPlugin, document: dict[str, Any], section: str, name: str) -> str:
    if section == "params":
        try:
            plugin.validate_params(document["model"]["params"])
        except ValueError as exc:
            return " ".join(getattr(exc, "problems", None) or [str(exc)])
        return ""
    try:
        TrainSpec.model_validate(document["train"])
    except ValidationError as exc:
        return "; ".join(e["msg"] for e in exc.errors())
    if name == "lr" and not math.isfinite(float(document["train"]["lr"])):
        return "not finite"
    return ""


TRIAL_ID = re.compile(r"^(?P<parent>.+)-trial-(?P<number>[0-9]+)$")
"""A trial's job id: ``<tune job id>-trial-<N>`` (N: Optuna's trial number, from 0)."""


def trial_job_id(parent_id: str, number: int) -> str:
    return f"{parent_id}-trial-{number}"


def trial_name(parent_name: str, number: int) -> str:
    suffix = f"-trial-{number}"
    return parent_name[: 63 - len(suffix)].rstrip("-") + suffix


def is_trial_run(run_id: str) -> bool:
    """Whether a run id is a tune trial's (its first run or a later one)."""
    return TRIAL_ID.match(job_id_of(run_id)) is not None
