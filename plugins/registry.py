"""Find installed model plugins, apart from loading them.

``discover`` reads the ``dcsched.models`` entry points and returns sorted, unloaded
``PluginRecord`` values (name, entry-point value, distribution and version): listing
plugins imports none of them. ``load_plugin`` imports one plugin and wraps any failure
in ``PluginLoadError`` naming the distribution that shipped it, so a broken third-party
package is named rather than surfacing as a bare ImportError.

Errors (all ``PluginError``):
- ``UnknownPluginError`` (a LookupError): no plugin of that name; lists installed ones.
- ``DuplicatePluginError``: two distributions register the same name.
- ``PluginLoadError``: importing or instantiating the plugin failed, it is not a
  ``ModelPlugin`` of the registered name, or it was written for another ``api_version``
  (``dcsched.plugins.api.API_VERSION``). Such a plugin is *broken*: listed with its
  package and the error, refused at submit with the same message; nothing else fails.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dcsched.plugins.api import API_VERSION, ModelPlugin

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "dcsched.models"
INSTALL_HINT = (
    "install a package that declares an entry point in the group "
    f'"{ENTRY_POINT_GROUP}" (see dcsched.plugins.api), e.g. `pip install my-dcsched-model`'
)


class PluginError(Exception):
    """Any problem finding or loading a model plugin."""


class UnknownPluginError(PluginError, LookupError):
    """No installed plugin has the requested name."""

    def __init__(self, name: str, installed: Sequence[str]):
        self.name = name
        self.installed = list(installed)
        listed = ", ".join(self.installed) if self.installed else "none"
        super().__init__(
            f"unknown model type {name!r}; installed model plugins: {listed}. "
            f"To add one, {INSTALL_HINT}"
        )


class DuplicatePluginError(PluginError, LookupError):
    """Two entry points claim the same plugin name."""


class PluginLoadError(PluginError, RuntimeError):
    """Importing or instantiating a plugin failed; ``distribution`` names its package."""

    def __init__(self, message: str, *, name: str, distribution: str):
        self.name = name
        self.distribution = distribution
        super().__init__(message)


@dataclass(frozen=True, order=True, slots=True)
class PluginRecord:
    """An installed, not yet imported plugin."""

    name: str
    value: str
    """The entry point's ``module:attribute``."""
    distribution: str
    version: str

    @property
    def origin(self) -> str:
        return f"{self.distribution} {self.version}"


def discover() -> list[PluginRecord]:
    """All installed plugins, sorted by name; imports none of them.

    Raises DuplicatePluginError when two different entry points share a name (the same
    entry point seen twice, e.g. from an editable install, counts once).
    """
    by_name: dict[str, PluginRecord] = {}
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        record = _record(entry_point)
        previous = by_name.get(record.name)
        if previous is None or previous == record:
            by_name[record.name] = record
            continue
        raise DuplicatePluginError(
            f"model plugin name {record.name!r} is registered twice: by {previous.origin} "
            f"({previous.value}) and by {record.origin} ({record.value}); "
            "uninstall one of the two packages"
        )
    return sorted(by_name.values())


def load_plugin(name: str, records: Sequence[PluginRecord] | None = None) -> ModelPlugin:
    """Import and instantiate the plugin called ``name``.

    ``records`` defaults to ``discover()``. Raises UnknownPluginError or PluginLoadError.
    """
    found = discover() if records is None else list(records)
    for record in found:
        if record.name == name:
            return load_record(record)
    raise UnknownPluginError(name, [record.name for record in found])


def load_record(record: PluginRecord) -> ModelPlugin:
    """Import and instantiate one discovered plugin, or raise PluginLoadError."""
    where = f"model plugin {record.name!r} ({record.value}) from {record.origin}"
    entry_point = importlib.metadata.EntryPoint(
        name=record.name, value=record.value, group=ENTRY_POINT_GROUP
    )
    try:
        target = entry_point.load()
    except Exception as exc:
        raise _load_error(record, f"{where} failed to import: {type(exc).__name__}: {exc}") from exc
    if isinstance(target, type) and issubclass(target, ModelPlugin):
        try:
            plugin = target()
        except Exception as exc:
            raise _load_error(
                record, f"{where} could not be created: {type(exc).__name__}: {exc}"
            ) from exc
    elif isinstance(target, ModelPlugin):
        plugin = target
    else:
        raise _load_error(record, f"{where} is {target!r}, not a ModelPlugin subclass")
    declared = getattr(plugin, "api_version", None)
    if declared != API_VERSION:
        said = "declares no api_version" if declared is None else f"is for api_version {declared}"
        raise _load_error(
            record,
            f"{where} {said}, but this dcsched speaks plugin API version {API_VERSION}; "
            f"install a release of {record.distribution} built for version {API_VERSION}",
        )
    if getattr(plugin, "name", None) != record.name:
        raise _load_error(
            record,
            f"{where} calls itself {getattr(plugin, 'name', None)!r}; the entry-point name "
            "and the plugin's `name` must be equal",
        )
    logger.debug("loaded %s", where)
    return plugin


def describe_plugins(records: Sequence[PluginRecord] | None = None) -> list[dict[str, Any]]:
    """One dict per installed plugin for listings; loads each plugin (never torch).

    Keys: name, status (``ok`` or ``broken``), description, distribution, version,
    error, and those of ``ModelPlugin.describe`` (api_version, params_schema,
    data_sources, metrics, search_space, resources, gpu, multi_worker, uses_torch). A
    plugin that fails to load is still listed, ``broken``, with ``error`` saying why
    and no schema; ``error`` is None otherwise.
    """
    described = []
    for record in discover() if records is None else records:
        entry: dict[str, Any] = {
            "name": record.name,
            "status": "ok",
            "description": "",
            "distribution": record.distribution,
            "version": record.version,
            "params_schema": None,
            "error": None,
        }
        try:
            plugin = load_record(record)
            entry.update(plugin.describe())
        except PluginLoadError as exc:
            logger.warning("%s", exc)
            entry["status"] = "broken"
            entry["error"] = str(exc)
        except Exception as exc:  # a plugin's describe hooks failing: broken, not a crash
            logger.warning("model plugin %s: %s", record.name, exc)
            entry["status"] = "broken"
            entry["error"] = (
                f"model plugin {record.name!r} from {record.origin} cannot describe itself: "
                f"{type(exc).__name__}: {exc}"
            )
        described.append(entry)
    return described


def _record(entry_point: importlib.metadata.EntryPoint) -> PluginRecord:
    dist = entry_point.dist
    if dist is None:
        distribution, version = "an unknown distribution", "?"
    else:
        distribution = dist.metadata["Name"] or getattr(dist, "name", "?")
        version = dist.version or "?"
    return PluginRecord(
        name=entry_point.name,
        value=entry_point.value,
        distribution=distribution,
        version=version,
    )


def _load_error(record: PluginRecord, message: str) -> PluginLoadError:
    return PluginLoadError(message, name=record.name, distribution=record.distribution)
