"""``FakeNvml``: an in-memory STAND-IN for NVML, for machines without an NVIDIA GPU.

It is the project's only stand-in (this development machine has no GPU): the node
exporter's tests and ``bench/scrape.py`` use it; production code never does. It
implements ``dcsched.exporters.nvml.GpuLibrary`` deterministically:

- N GPUs (``FakeGpu``) with fixed readings that a test may change between scrapes;
- M processes (``FakeProcess``, in ``procs``): a pid on a GPU with its GPU memory and SM share. The
  pids are meant to be real processes (a test spawns them with ``DCSCHED_JOB_ID`` and
  ``DCSCHED_TEAM`` in their environment) so the exporter's real attribution path runs;
- failures: ``fail(field, gpu)`` makes one method raise ``NvmlError`` for one GPU (or all),
  ``FakeNvml(available=False)`` fails ``init`` like a machine without the driver;
- XID events: ``inject_xid(gpu, code)`` queues one for the next ``xid_events`` call.

Process utilisation samples carry a fake clock that advances one second per call, so
"samples since the last scrape" behaves as with the real library.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from dcsched.exporters.nvml import (
    ERROR_LIBRARY_NOT_FOUND,
    ERROR_UNKNOWN,
    GpuProcess,
    MemoryInfo,
    NvmlError,
    ProcessSample,
    Utilization,
    XidEvent,
)

GIB = 1024**3

# The GpuLibrary methods that take a GPU index: the fields ``fail`` can break.
FIELDS = frozenset(
    {
        "uuid",
        "name",
        "utilization",
        "memory",
        "temperature_celsius",
        "power_watts",
        "energy_joules",
        "sm_clock_hertz",
        "ecc_errors",
        "processes",
        "process_utilization",
    }
)


@dataclass
class FakeGpu:
    index: int
    uuid: str = ""
    name: str = "NVIDIA A100-SXM4-80GB"
    utilization_percent: float = 50.0
    memory_utilization_percent: float = 20.0
    memory_used_bytes: int = 0
    memory_total_bytes: int = 80 * GIB
    temperature_celsius: float = 60.0
    power_watts: float = 250.0
    energy_joules: float = 1_000_000.0
    sm_clock_hertz: float = 1.41e9
    ecc_corrected: int = 0
    ecc_uncorrected: int = 0

    def __post_init__(self) -> None:
        if not self.uuid:
            self.uuid = f"GPU-fake0000-0000-0000-0000-{self.index:012d}"


@dataclass
class FakeProcess:
    pid: int
    gpu: int
    used_memory_bytes: int | None = GIB
    sm_percent: float = 0.0  # its share of the GPU's SM time, in percent


@dataclass
class FakeNvml:
    """The stand-in. ``calls`` counts every method call (by name), for tests."""

    gpus: list[FakeGpu] = field(default_factory=list)
    procs: list[FakeProcess] = field(default_factory=list)
    available: bool = True
    calls: Counter[str] = field(default_factory=Counter)
    initialised: bool = False
    _failures: dict[tuple[str, int | None], int] = field(default_factory=dict)
    _xids: list[XidEvent] = field(default_factory=list)
    _clock_us: int = 0

    @classmethod
    def with_gpus(
        cls, count: int, pids: list[int] | tuple[int, ...] = (), sm_percent: float = 10.0
    ) -> FakeNvml:
        """``count`` GPUs; the pids spread over them round-robin, each with 1 GiB and
        ``sm_percent``; each GPU's memory used is the sum of its processes'."""
        gpus = [FakeGpu(index) for index in range(count)]
        procs = [
            FakeProcess(pid, i % count, GIB, sm_percent) for i, pid in enumerate(pids) if count
        ]
        for proc in procs:
            gpus[proc.gpu].memory_used_bytes += proc.used_memory_bytes or 0
        return cls(gpus, procs)

    # -- test controls -----------------------------------------------------------------

    def fail(self, field_name: str, gpu: int | None = None, code: int = ERROR_UNKNOWN) -> None:
        """Make ``field_name`` (a method name) raise ``NvmlError(code)`` on ``gpu``, or on
        every GPU when ``gpu`` is None, until ``heal``."""
        if field_name not in FIELDS:
            raise ValueError(f"unknown field {field_name!r}; one of {sorted(FIELDS)}")
        self._failures[(field_name, gpu)] = code

    def heal(self) -> None:
        self._failures.clear()

    def inject_xid(self, gpu: int, code: int) -> None:
        self._xids.append(XidEvent(gpu, code))

    # -- GpuLibrary --------------------------------------------------------------------

    def init(self) -> None:
        self.calls["init"] += 1
        if not self.available:
            raise NvmlError(ERROR_LIBRARY_NOT_FOUND, "NVML Shared Library Not Found (stand-in)")
        self.initialised = True

    def shutdown(self) -> None:
        self.calls["shutdown"] += 1
        self.initialised = False

    def device_count(self) -> int:
        self.calls["device_count"] += 1
        self._check_init()
        return len(self.gpus)

    def _gpu(self, method: str, gpu: int) -> FakeGpu:
        self.calls[method] += 1
        self._check_init()
        for key in ((method, gpu), (method, None)):
            if key in self._failures:
                raise NvmlError(self._failures[key], f"{method} failed on GPU {gpu} (stand-in)")
        if not 0 <= gpu < len(self.gpus):
            raise NvmlError(2, f"no GPU {gpu}")  # NVML_ERROR_INVALID_ARGUMENT
        return self.gpus[gpu]

    def _check_init(self) -> None:
        if not self.initialised:
            raise NvmlError(1, "Uninitialized (stand-in)")  # NVML_ERROR_UNINITIALIZED

    def uuid(self, gpu: int) -> str:
        return self._gpu("uuid", gpu).uuid

    def name(self, gpu: int) -> str:
        return self._gpu("name", gpu).name

    def utilization(self, gpu: int) -> Utilization:
        g = self._gpu("utilization", gpu)
        return Utilization(g.utilization_percent, g.memory_utilization_percent)

    def memory(self, gpu: int) -> MemoryInfo:
        g = self._gpu("memory", gpu)
        return MemoryInfo(g.memory_used_bytes, g.memory_total_bytes)

    def temperature_celsius(self, gpu: int) -> float:
        return self._gpu("temperature_celsius", gpu).temperature_celsius

    def power_watts(self, gpu: int) -> float:
        return self._gpu("power_watts", gpu).power_watts

    def energy_joules(self, gpu: int) -> float:
        return self._gpu("energy_joules", gpu).energy_joules

    def sm_clock_hertz(self, gpu: int) -> float:
        return self._gpu("sm_clock_hertz", gpu).sm_clock_hertz

    def ecc_errors(self, gpu: int, uncorrected: bool) -> int:
        g = self._gpu("ecc_errors", gpu)
        return g.ecc_uncorrected if uncorrected else g.ecc_corrected

    def processes(self, gpu: int) -> list[GpuProcess]:
        self._gpu("processes", gpu)
        return [GpuProcess(p.pid, p.used_memory_bytes) for p in self.procs if p.gpu == gpu]

    def process_utilization(self, gpu: int, since_us: int) -> list[ProcessSample]:
        self._gpu("process_utilization", gpu)
        self._clock_us += 1_000_000
        if self._clock_us <= since_us:
            return []
        return [
            ProcessSample(p.pid, self._clock_us, p.sm_percent)
            for p in self.procs
            if p.gpu == gpu and p.sm_percent > 0
        ]

    def xid_events(self) -> list[XidEvent]:
        self.calls["xid_events"] += 1
        self._check_init()
        events, self._xids = self._xids, []
        return events
