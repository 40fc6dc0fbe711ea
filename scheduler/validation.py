"""Checks that a spec can actually run here, beyond its schema, per kind: its inputs may
be read (``dcsched.inputs``); for ``train``, the model plugin exists and accepts the
parameters, and the data source is there with its target column; for ``infer``, the
model version is registered, and the input table has rows and exactly the model's
feature columns (``dcsched.inference``).

Used by the service at submit time, so that a job that could never run is refused with
a clear message instead of failing later on a node.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from dcsched.core.spec import SpecError
from dcsched.inputs import InputError, InputStore, resolve_payload
from dcsched.kinds import AnyJobSpec, InferJobSpec, TrainJobSpec, TuneJobSpec, split
from dcsched.plugins.api import DataError
from dcsched.plugins.registry import PluginLoadError, UnknownPluginError, load_plugin

if TYPE_CHECKING:
    from dcsched.inference.models import ModelRegistry


def check_runnable(
    spec: AnyJobSpec, inputs: InputStore, models: ModelRegistry | None = None
) -> list[str]:
    """Every problem that keeps ``spec`` from running here; ``models``: the registry an
    ``infer`` job's model is looked up in (without it, the run checks the model)."""
    problems: list[str] = []
    _, kind, payload = split(spec)
    try:
        resolved = resolve_payload(kind, payload, inputs)
    except InputError as exc:
        return [str(exc)]
    if isinstance(spec, TrainJobSpec):
        problems.extend(
            _check_train(TrainJobSpec.model_validate({**spec.model_dump(), **resolved}))
        )
    if isinstance(spec, InferJobSpec):
        problems.extend(_check_infer(spec, Path(resolved["infer"]["input"]), models))
    if isinstance(spec, TuneJobSpec):
        problems.extend(_check_tune(TuneJobSpec.model_validate({**spec.model_dump(), **resolved})))
    working_dir = resolved.get("run", {}).get("working_dir") if kind == "run" else None
    if working_dir and os.path.isfile(working_dir) and not zipfile.is_zipfile(working_dir):
        problems.append("run.working_dir: the upload is not a zip of a folder")
    return problems


def _check_train(spec: TrainJobSpec) -> list[str]:
    problems: list[str] = []
    try:
        plugin = load_plugin(spec.model.type)
    except (UnknownPluginError, PluginLoadError) as exc:
        return [f"model.type: {exc}"]
    else:
        if spec.resources.workers > 1 and not plugin.multi_worker:
            problems.append(
                f"resources.workers: model type {plugin.name!r} trains on one worker; "
                "set workers: 1"
            )
        if spec.resources.gpus > 0 and not plugin.gpu:
            problems.append(
                f"resources.gpus: model type {plugin.name!r} does not use GPUs; set gpus: 0"
            )
        try:
            plugin.validate_params(spec.model.params)
        except ValueError as exc:
            lines = getattr(exc, "problems", None) or [str(exc)]
            problems.extend(lines)
    try:
        plugin.check_data(spec.data)
    except (SpecError, DataError) as exc:
        problems.extend(exc.problems)
    return problems


def _check_infer(spec: InferJobSpec, table: Path, models: ModelRegistry | None) -> list[str]:
    """The model exists; the input table has rows and the model's feature columns."""
    from dcsched.inference import models as registry
    from dcsched.inference.table import InputTableError, column_problems, describe, table_format

    problems: list[str] = []
    features = None
    if models is not None:
        try:
            version = registry.resolve(models, spec.infer.model)
        except registry.ModelNotFound as exc:
            problems.append(str(exc))
        else:
            features = registry.saved_features(Path(version.path))
            label = f"{version.name}:{version.version}"
            try:
                load_plugin(version.plugin)
            except (UnknownPluginError, PluginLoadError) as exc:
                problems.append(f"infer.model: {label} needs a model type not available: {exc}")
    try:
        shape = describe(table, table_format(table, spec.infer.input_format))
    except InputTableError as exc:
        return [*problems, str(exc)]
    if features is not None:
        problems.extend(column_problems(shape.columns, features, label))
    if not shape.has_rows:
        problems.append(
            "infer.input: the input has no rows (only a header); give a table with at "
            "least one row to score"
        )
    return problems


def _check_tune(spec: TuneJobSpec) -> list[str]:
    """The base train sections as a train job's, then the study (``dcsched.kinds.tune``)."""
    from dcsched.kinds.tune import check_tune
    from dcsched.training.data import SKLEARN_DATASETS

    base = {k: v for k, v in spec.model_dump(by_alias=True).items() if k != "tune"}
    problems = _check_train(TrainJobSpec.model_validate({**base, "kind": "train"}))
    try:
        plugin = load_plugin(spec.model.type)
    except (UnknownPluginError, PluginLoadError):
        return problems  # said above
    task = SKLEARN_DATASETS.get(spec.data.location) if spec.data.scheme == "sklearn" else None
    return problems + check_tune(spec, plugin, task)
