"""Checks that a spec can actually run here, beyond its schema: the model plugin exists
and accepts the parameters, and the data source is there with its target column.

Used by the service at submit time, so that a job that could never run is refused with
a clear message instead of failing later on a node.
"""

from __future__ import annotations

from dcsched.core.spec import JobSpec, SpecError
from dcsched.plugins.registry import PluginLoadError, UnknownPluginError, load_plugin
from dcsched.training.data import check_source


def check_runnable(spec: JobSpec) -> list[str]:
    problems: list[str] = []
    if spec.kind == "train" and spec.resources.workers > 1:
        problems.append(
            "resources.workers: training runs on one worker for now (multi-worker "
            "data-parallel training is not built yet); set workers: 1"
        )
    try:
        plugin = load_plugin(spec.model.type)
    except (UnknownPluginError, PluginLoadError) as exc:
        problems.append(f"model.type: {exc}")
    else:
        try:
            plugin.validate_params(spec.model.params)
        except ValueError as exc:
            lines = getattr(exc, "problems", None) or [str(exc)]
            problems.extend(lines)
    try:
        check_source(spec.data)
    except SpecError as exc:
        problems.extend(exc.problems)
    return problems
