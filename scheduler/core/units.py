"""Human-friendly quantities: memory sizes like ``1GiB`` or ``512MB``.

Binary suffixes (KiB, MiB, GiB, TiB) are powers of 1024, decimal ones (KB, MB, GB, TB)
powers of 1000; a bare number is bytes. Case of the suffix is ignored, ``Gi`` and ``G``
are accepted as short forms.
"""

from __future__ import annotations

import math
import re

_MULTIPLIERS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
    "ti": 1024**4,
    "tib": 1024**4,
}

MAX_BYTES = 2**60
"""Largest memory size accepted anywhere (1 EiB): larger ones are typos, and would lose
precision or overflow as floats."""
MAX_DURATION_S = 100 * 366 * 24 * 3600.0
"""Longest duration that parses (a century); fields set tighter bounds of their own."""

_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_memory(value: str | int | float) -> int:
    """Return a memory size in bytes.

    Raises ValueError with a message that shows accepted forms.
    """
    if isinstance(value, bool):
        raise ValueError("memory must be a size like 512MiB or 2GiB, not a boolean")
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"memory must be a finite size, got {value}")
        if value < 0:
            raise ValueError(f"memory must not be negative, got {value}")
        if value > MAX_BYTES:
            raise ValueError(f"memory {_short(value)} is larger than {MAX_BYTES} bytes (1 EiB)")
        return int(value)
    match = _MEMORY_RE.match(value) if isinstance(value, str) else None
    if match is None or match.group(2).lower() not in _MULTIPLIERS:
        raise ValueError(
            f"memory {_short(value)} is not a size; write a number with a unit, "
            "for example 512MiB, 2GiB or 4GB"
        )
    number, unit = match.groups()
    size = float(number) * _MULTIPLIERS[unit.lower()]
    if not math.isfinite(size) or size > MAX_BYTES:
        raise ValueError(f"memory {_short(value)} is larger than {MAX_BYTES} bytes (1 EiB)")
    return int(size)


def _short(value: object) -> str:
    """A value as an error message shows it: repr, cut to 40 characters."""
    try:
        text = repr(value) if isinstance(value, str) else str(value)
    except ValueError:  # an int too long to print
        return "(a number too large to show)"
    return text if len(text) <= 40 else text[:37] + "..."


def format_bytes(n: int) -> str:
    """Format bytes with the largest binary unit that keeps the number >= 1."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            if unit == "B":
                return f"{int(size)}B"
            return f"{size:.1f}{unit}".replace(".0", "")
        size /= 1024
    raise AssertionError("unreachable")


_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(d|h|m|s|ms)")
_DURATION_SECONDS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(value: str | int | float) -> float:
    """Seconds from ``90``, ``"90s"``, ``"30m"``, ``"2h"``, ``"1d"`` or ``"1h30m"``."""
    if isinstance(value, bool):
        raise ValueError("a duration must be like 30m or 2h, not a boolean")
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"a duration must be finite, got {value}")
        if value < 0:
            raise ValueError(f"a duration must not be negative, got {value}")
        return _bounded_duration(float(min(value, 2 * MAX_DURATION_S)), value)
    if not isinstance(value, str):
        raise ValueError(f"duration {_short(value)} is not understood; write e.g. 30m or 2h")
    text = value.strip().lower().replace(" ", "")
    if text and _DURATION_RE.sub("", text) == "":
        seconds = sum(float(n) * _DURATION_SECONDS[u] for n, u in _DURATION_RE.findall(text))
        return _bounded_duration(seconds, value)
    if text.replace(".", "", 1).isdigit():
        return _bounded_duration(float(text), value)
    raise ValueError(
        f"duration {_short(value)} is not understood; write e.g. 90s, 30m, 2h or 1h30m"
    )


def _bounded_duration(seconds: float, given: object) -> float:
    if not math.isfinite(seconds) or seconds > MAX_DURATION_S:
        raise ValueError(f"duration {_short(given)} is longer than 100 years")
    return seconds


def format_duration(seconds: float) -> str:
    """45s, 3m12s, 2h05m, 3d04h (whole seconds, never negative)."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"
