"""Which registered model version a batch inference job scores with, and its features.

``resolve`` turns ``NAME`` (the latest version) or ``NAME:VERSION`` into a registered
``ModelVersion``, or raises ``ModelNotFound`` whose message lists what exists.
``saved_features`` reads the feature names a saved model was trained on from the
``info`` its plugin wrote in ``model.json`` (the built-in plugins all do), without
importing torch; a plugin that writes no such file has its columns checked when the
job runs instead (the worker loads the model and asks it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from dcsched.kinds.infer import parse_model_ref
from dcsched.ports import ModelVersion

MODEL_INFO_FILE = "model.json"


class ModelRegistry(Protocol):
    """The part of the store that batch inference reads."""

    def model_versions(self, name: str) -> list[ModelVersion]: ...

    def model_names(self) -> list[tuple[str, int, int, float]]: ...


class ModelNotFound(LookupError):
    pass


def resolve(models: ModelRegistry, ref: str) -> ModelVersion:
    """The registered version ``ref`` names; ModelNotFound saying what exists if none."""
    name, version = parse_model_ref(ref)
    versions = models.model_versions(name)
    if not versions:
        names = [entry[0] for entry in models.model_names()]
        listed = ", ".join(names[:30]) + (f" and {len(names) - 30} more" if len(names) > 30 else "")
        raise ModelNotFound(
            f"infer.model: no registered model named {name!r}; "
            + (
                f"registered models: {listed} (`dcsched models list`)"
                if names
                else "none is registered yet: a train job registers its model when it succeeds"
            )
        )
    if version is None:
        return versions[-1]
    for candidate in versions:
        if candidate.version == version:
            return candidate
    numbers = ", ".join(str(v.version) for v in versions)
    raise ModelNotFound(
        f"infer.model: model {name!r} has no version {version}; its versions are: {numbers}"
    )


def saved_info(directory: Path) -> dict[str, Any] | None:
    """The ``info`` (task, features, classes) a plugin saved with the model, or None."""
    try:
        meta = json.loads((Path(directory) / MODEL_INFO_FILE).read_text())
    except (OSError, ValueError):
        return None
    info = meta.get("info") if isinstance(meta, dict) else None
    if not isinstance(info, dict) or not isinstance(info.get("feature_names"), list):
        return None
    return info


def saved_features(directory: Path) -> list[str] | None:
    info = saved_info(directory)
    return None if info is None else [str(name) for name in info["feature_names"]]


def resolution(models: ModelRegistry, payload: dict[str, Any]) -> dict[str, Any]:
    """What an infer run's spec.json says of its model: the version ``infer.model``
    names now, or ``{"error": ...}`` (the run then fails with that reason)."""
    try:
        return describe(resolve(models, str(payload.get("infer", {}).get("model", ""))))
    except (ModelNotFound, ValueError) as exc:
        return {"error": str(exc)}


def describe(version: ModelVersion) -> dict[str, Any]:
    """What a run needs to know of the version (written into its spec.json)."""
    return {
        "name": version.name,
        "version": version.version,
        "plugin": version.plugin,
        "path": version.path,
        "checksum": version.checksum,
    }
