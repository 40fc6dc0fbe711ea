"""Reading every GPU of the node through a ``GpuLibrary`` (``dcsched.exporters.nvml``).

``GpuReader.read()`` returns one ``GpuReading`` per GPU it could identify, or ``None``
when NVML is not there (the node exporter then reports ``dcsched_gpu_collector_up`` 0).

Invariants:
- ``init`` is tried again at most every ``init_retry_s`` while it fails.
- An ``NvmlError`` on one field drops that value; on the GPU's UUID or name, the GPU (for
  this reading; the identity is kept once read). Each distinct failure (GPU, field, NVML
  code) is logged once, at debug level.
- XID events are drained at each reading and counted per GPU from zero.
- Process samples are asked for since the newest sample seen on that GPU, and each
  process's samples are averaged into its share (percent / 100).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from dcsched.exporters.nvml import GpuLibrary, GpuProcess, NvmlError

logger = logging.getLogger(__name__)


@dataclass
class GpuReading:
    index: int
    uuid: str
    model: str
    values: dict[str, float] = field(default_factory=dict)  # a key is absent when dropped
    ecc: dict[str, int] = field(default_factory=dict)  # "corrected" / "uncorrected"
    processes: list[GpuProcess] | None = None  # None: NVML would not say
    shares: dict[int, float] | None = None  # pid -> SM ratio; None: no samples call
    xid_errors: int = 0
    last_xid: int = 0


class GpuReader:
    """Reads every GPU through a ``GpuLibrary``; keeps identities, XID counts and the
    timestamp of the last process sample seen per GPU."""

    def __init__(self, library: GpuLibrary, init_retry_s: float, monotonic: Callable[[], float]):
        self.library = library
        self.init_retry_s = init_retry_s
        self._monotonic = monotonic
        self.ready = False
        self._next_init = 0.0
        self._identity: dict[int, tuple[str, str]] = {}
        self._xid_count: dict[int, int] = {}
        self._last_xid: dict[int, int] = {}
        self._last_sample_us: dict[int, int] = {}
        self._noted: set[tuple[int | None, str, int]] = set()

    def _note(self, gpu: int | None, what: str, exc: NvmlError) -> None:
        key = (gpu, what, exc.code)
        if key not in self._noted:
            self._noted.add(key)
            logger.debug("NVML %s failed on GPU %s (dropped; logged once): %s", what, gpu, exc)

    def _init(self) -> bool:
        now = self._monotonic()
        if now < self._next_init:
            return False
        self._next_init = now + self.init_retry_s
        try:
            self.library.init()
        except NvmlError as exc:
            self._note(None, "init", exc)
            return False
        logger.info("NVML initialised")
        self.ready = True
        return True

    def close(self) -> None:
        if self.ready:
            self.ready = False
            try:
                self.library.shutdown()
            except NvmlError as exc:
                logger.debug("NVML shutdown failed: %s", exc)

    def read(self) -> list[GpuReading] | None:
        if not self.ready and not self._init():
            return None
        try:
            count = self.library.device_count()
        except NvmlError as exc:
            self._note(None, "device_count", exc)
            return None
        try:
            for event in self.library.xid_events():
                self._xid_count[event.gpu] = self._xid_count.get(event.gpu, 0) + 1
                self._last_xid[event.gpu] = event.code
        except NvmlError as exc:
            self._note(None, "xid_events", exc)
        readings = []
        for gpu in range(count):
            reading = self._read_one(gpu)
            if reading is not None:
                readings.append(reading)
        return readings

    def _read_one(self, gpu: int) -> GpuReading | None:
        lib = self.library
        identity = self._identity.get(gpu)
        if identity is None:
            try:
                identity = self._identity[gpu] = (lib.uuid(gpu), lib.name(gpu))
            except NvmlError as exc:
                self._note(gpu, "identity", exc)
                return None
        reading = GpuReading(gpu, identity[0], identity[1])
        reading.xid_errors = self._xid_count.get(gpu, 0)
        reading.last_xid = self._last_xid.get(gpu, 0)
        values = reading.values
        try:
            values["utilization_ratio"] = lib.utilization(gpu).gpu_percent / 100.0
        except NvmlError as exc:
            self._note(gpu, "utilization", exc)
        try:
            memory = lib.memory(gpu)
            values["memory_used_bytes"] = memory.used_bytes
            values["memory_total_bytes"] = memory.total_bytes
        except NvmlError as exc:
            self._note(gpu, "memory", exc)
        simple: tuple[tuple[str, Callable[[int], float]], ...] = (
            ("temperature_celsius", lib.temperature_celsius),
            ("power_watts", lib.power_watts),
            ("energy_joules", lib.energy_joules),
            ("sm_clock_hertz", lib.sm_clock_hertz),
        )
        for key, read in simple:
            try:
                values[key] = read(gpu)
            except NvmlError as exc:
                self._note(gpu, key, exc)
        for kind, uncorrected in (("corrected", False), ("uncorrected", True)):
            try:
                reading.ecc[kind] = lib.ecc_errors(gpu, uncorrected)
            except NvmlError as exc:
                self._note(gpu, f"ecc_errors {kind}", exc)
        try:
            reading.processes = lib.processes(gpu)
        except NvmlError as exc:
            self._note(gpu, "processes", exc)
        try:
            samples = lib.process_utilization(gpu, self._last_sample_us.get(gpu, 0))
        except NvmlError as exc:
            self._note(gpu, "process_utilization", exc)
        else:
            per_pid: dict[int, list[float]] = {}
            for sample in samples:
                per_pid.setdefault(sample.pid, []).append(sample.sm_percent)
                if sample.timestamp_us > self._last_sample_us.get(gpu, 0):
                    self._last_sample_us[gpu] = sample.timestamp_us
            reading.shares = {pid: sum(v) / len(v) / 100.0 for pid, v in per_pid.items()}
        return reading
