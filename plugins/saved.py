"""The check every built-in model type's ``load`` makes before it reads a saved model:
the files it needs are there, and the metadata names this plugin and its format."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

META_FILE = "model.json"


def read_meta(directory: Path, plugin: str, version: int, files: Sequence[str]) -> dict[str, Any]:
    """The metadata (``model.json``) of the ``plugin`` model of format ``version`` saved in
    ``directory``. FileNotFoundError when it or one of ``files`` is missing; ValueError
    when it holds another plugin's model or another format."""
    for name in (META_FILE, *files):
        if not (directory / name).is_file():
            raise FileNotFoundError(
                f"{directory / name} is missing; is {directory} a saved {plugin} model?"
            )
    meta: dict[str, Any] = json.loads((directory / META_FILE).read_text())
    if meta.get("plugin") != plugin or meta.get("format") != version:
        raise ValueError(
            f"{directory} holds a {meta.get('plugin')!r} model of format "
            f"{meta.get('format')!r}; expected {plugin!r} format {version}"
        )
    return meta
