"""Tables, times and amounts as the CLI prints them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from dcsched.core.lifecycle import JobState
from dcsched.core.units import format_bytes, format_duration

# -- formatting ------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _ago(value: Any, now: datetime) -> str:
    when = _parse_time(value)
    if when is None:
        return str(value) if value else "-"
    return f"{format_duration((now - when).total_seconds())} ago"


def _when(value: Any, now: datetime) -> str | None:
    when = _parse_time(value)
    if when is None:
        return str(value) if value else None
    return f"{when.strftime('%Y-%m-%d %H:%M:%S')} UTC ({_ago(value, now)})"


def _between(start: Any, end: Any, now: datetime) -> str | None:
    begin = _parse_time(start)
    if begin is None:
        return None
    finish = _parse_time(end) or now
    return format_duration((finish - begin).total_seconds())


def _num(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:g}"
    return "-" if value is None else str(value)


def _memory(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        text: str = format_bytes(int(value))
        return text
    return "-" if value is None else str(value)


def _resources(res: Any, total: bool = False) -> str:
    """``1x 1cpu 0gpu 1GiB`` (per worker); with ``total`` the gang's sum too."""
    if not isinstance(res, dict):
        return "-"
    workers = res.get("workers", 1)
    cpus, gpus, memory = res.get("cpus"), res.get("gpus"), res.get("memory")
    text = f"{workers}x {_num(cpus)}cpu {_num(gpus)}gpu {_memory(memory)}"
    numbers = [n for n in (cpus, gpus, memory) if isinstance(n, int | float)]
    if total and isinstance(workers, int) and workers > 1 and len(numbers) == 3:
        cpus_all, gpus_all, memory_all = (workers * n for n in numbers)
        text += f" (total {_num(cpus_all)}cpu {_num(gpus_all)}gpu {_memory(memory_all)})"
    return text


def _queue_reason(job: Mapping[str, Any]) -> str:
    reason = job.get("reason") or ""
    position = job.get("position")
    if job.get("state") == JobState.PENDING and position is not None:
        text = f"#{position} in queue: {reason}" if reason else f"#{position} in queue"
        estimate = _parse_time(job.get("estimated_start"))
        if estimate is not None:
            text += f" (estimated start in {format_duration((estimate - _now()).total_seconds())})"
        return text
    return str(reason)


def _ray_warning(job: Mapping[str, Any]) -> str | None:
    """None while the server reaches Ray; else why not, and what that means for the job."""
    ray = job.get("ray")
    if not isinstance(ray, Mapping) or ray.get("reachable", True):
        return None
    error = ray.get("error") or "no answer"
    if job.get("state") in (JobState.ADMITTED, JobState.RUNNING):
        return f"unreachable ({error}); the state above is as last seen"
    return f"unreachable ({error}); queued jobs wait until it answers again"


def _short(value: Any, width: int = 12) -> str:
    text = "" if value is None else str(value)
    return text[:width]


def _node_list(node_ids: Any) -> str:
    """Each node once, with how many of the gang's workers it holds (``abc x2``)."""
    counts: dict[str, int] = {}
    for node in node_ids or []:
        counts[_short(node)] = counts.get(_short(node), 0) + 1
    ids = [f"{n} x{c}" if c > 1 else n for n, c in counts.items()]
    if len(ids) > 3:
        return ",".join(ids[:3]) + f",+{len(ids) - 3}"
    return ",".join(ids)


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _plain(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _pairs(mapping: Any) -> str:
    if not isinstance(mapping, dict) or not mapping:
        return ""
    return " ".join(f"{k}={_plain(v)}" for k, v in mapping.items())


def _model_ref(model: Any) -> str:
    if not isinstance(model, dict):
        return "" if model is None else str(model)
    return f"{model.get('name')}:{model.get('version')}"


def _cell(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], indent: int = 0) -> str:
    """Left-aligned columns separated by two spaces; None and "" show as '-'."""
    cells = [list(headers)] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    pad = " " * indent
    return "\n".join(
        pad + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def _fields(pairs: Sequence[tuple[str, Any]]) -> str:
    width = max(len(label) for label, _ in pairs) + 2
    return "\n".join(
        f"{label:<{width}}{value}" for label, value in pairs if value not in (None, "")
    )
