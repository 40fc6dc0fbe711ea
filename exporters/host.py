"""The host through psutil: CPU ratio since the previous reading, memory, and disk and
network byte counters (all disks; all interfaces but loopback)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psutil


@dataclass
class HostReading:
    cpu_utilization_ratio: float
    cpus: int
    memory_used_bytes: int
    memory_total_bytes: int
    disk_read_bytes: int | None
    disk_written_bytes: int | None
    network_receive_bytes: int
    network_transmit_bytes: int


def _busy_and_total(times: Any) -> tuple[float, float]:
    total = float(sum(times))
    # On Linux guest time is already inside user time; do not count it twice.
    total -= getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    idle = times.idle + getattr(times, "iowait", 0.0)
    return total - idle, total


class HostReader:
    def __init__(self) -> None:
        self._previous = _busy_and_total(psutil.cpu_times())
        self._ratio = 0.0
        self._cpus = psutil.cpu_count() or 1
        self._loopback: dict[str, bool] = {}

    def _is_loopback(self, nic: str) -> bool:
        known = self._loopback.get(nic)
        if known is None:
            stats = psutil.net_if_stats().get(nic)
            flags = getattr(stats, "flags", "") if stats is not None else ""
            known = self._loopback[nic] = nic == "lo" or "loopback" in flags.split(",")
        return known

    def read(self) -> HostReading:
        busy, total = _busy_and_total(psutil.cpu_times())
        busy_before, total_before = self._previous
        if total > total_before:  # else keep the last ratio: no time has passed
            self._ratio = min(1.0, max(0.0, (busy - busy_before) / (total - total_before)))
            self._previous = (busy, total)
        memory = psutil.virtual_memory()
        disk = psutil.disk_io_counters()
        received = sent = 0
        for nic, counters in psutil.net_io_counters(pernic=True).items():
            if not self._is_loopback(nic):
                received += counters.bytes_recv
                sent += counters.bytes_sent
        return HostReading(
            cpu_utilization_ratio=self._ratio,
            cpus=self._cpus,
            memory_used_bytes=int(memory.total - memory.available),
            memory_total_bytes=int(memory.total),
            disk_read_bytes=None if disk is None else int(disk.read_bytes),
            disk_written_bytes=None if disk is None else int(disk.write_bytes),
            network_receive_bytes=received,
            network_transmit_bytes=sent,
        )
