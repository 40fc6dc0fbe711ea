"""``dcsched.report``: progress from a job's own code, in one call.

    import dcsched
    dcsched.report(step=100, epoch=2, loss=0.31, accuracy=0.88)

Appends one JSON line to the job's progress file (``$DCSCHED_PROGRESS_FILE``, set by
dcsched for every rank); what it reports shows in ``dcsched status``, ``dcsched top``,
``/metrics`` (``loss``, ``epoch`` and ``samples_per_s`` feed the same series as built-in
training) and the job's result. Only rank 0 writes (``RANK`` unset counts as 0); outside
dcsched it does nothing, so a script runs unchanged elsewhere. Metrics must be numbers;
non-finite values are written as null. Standard library only; never raises for I/O.
"""

from __future__ import annotations

import json
import math
import os
import time

_MAX_METRICS = 64


def report(step: int | None = None, epoch: int | None = None, **metrics: float) -> bool:
    """Record progress; returns whether a line was written."""
    path = os.environ.get("DCSCHED_PROGRESS_FILE")
    if not path or os.environ.get("RANK", "0") != "0":
        return False
    if len(metrics) > _MAX_METRICS:
        raise ValueError(f"report at most {_MAX_METRICS} metrics at once")
    line: dict[str, object] = {"at": time.time()}
    if step is not None:
        line["step"] = int(step)
    if epoch is not None:
        line["epoch"] = int(epoch)
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"metric {name!r} must be a number, not {type(value).__name__}")
        line[name] = float(value) if math.isfinite(value) else None
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")
    except OSError:
        return False
    return True
