"""The API's serialised views of ended jobs, kept so that a listing does not build them
again.

An ended job's view (``http_api.job_view``: its row, the last line of its progress) never
changes, so its JSON bytes are kept and a listing of ended jobs needs neither their specs
parsed nor their run directories read. Invariants: only ended jobs' views are kept; at
most ``capacity`` of them (least recently used out), as ``bytes``, which the garbage
collector does not scan: a store of 10,000 or 1,000,000 jobs costs the server the same
memory (~0.5 KiB a view, ~1 MiB in all by default).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

ENDED_VIEWS = 2048
"""Views kept: the newest pages of ``dcsched list`` (200 jobs each) for every team and state."""


class EndedViews:
    """Job id -> the JSON bytes of its view, for ended jobs; thread-safe."""

    def __init__(self, capacity: int = ENDED_VIEWS):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self.capacity = capacity
        self._views: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, job_id: str) -> bytes | None:
        with self._lock:
            view = self._views.get(job_id)
            if view is not None:
                self._views.move_to_end(job_id)
            return view

    def put(self, job_id: str, view: bytes) -> None:
        with self._lock:
            self._views[job_id] = view
            self._views.move_to_end(job_id)
            while len(self._views) > self.capacity:
                self._views.popitem(last=False)

    def __contains__(self, job_id: object) -> bool:
        with self._lock:
            return job_id in self._views

    def __len__(self) -> int:
        with self._lock:
            return len(self._views)
