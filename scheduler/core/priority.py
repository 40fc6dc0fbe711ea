"""Priority classes: a name users write in specs, and the value that orders the queue.

Higher values go first. The defaults below apply until a cluster configuration defines
its own classes.
"""

from __future__ import annotations

from collections.abc import Mapping

DEFAULT_PRIORITY_CLASSES: Mapping[str, int] = {"low": 0, "normal": 100, "high": 1000}


def check_priority(name: str, classes: Mapping[str, int]) -> None:
    if name not in classes:
        known = ", ".join(sorted(classes, key=lambda c: classes[c]))
        raise ValueError(f"priority: unknown priority class {name!r}; known classes: {known}")
