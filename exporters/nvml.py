"""The NVML boundary: the few NVIDIA Management Library calls the node exporter makes.

``GpuLibrary`` is the typed surface; ``PyNvml`` implements it over ``pynvml`` (package
``nvidia-ml-py``, imported only when ``init`` runs), and ``dcsched.exporters.nvml_fake``
implements it in memory for machines without a GPU.

Invariants:
- Every failure of a call comes out as ``NvmlError`` (with NVML's numeric code where
  there is one), whatever the cause: no pynvml library, no driver, a lost GPU, a field the
  GPU does not support. Callers catch one type and drop one value.
- Devices are addressed by their NVML index; handles stay inside this module.
- Values come out in base units: bytes, watts, joules, hertz, celsius; utilisation as the
  percent NVML reports (0-100), the exporter turns it into a ratio.

Words: an *XID* is an error the driver reports for a GPU (a code, e.g. 79 "fallen off the
bus"); NVML delivers them as events of type ``nvmlEventTypeXidCriticalError`` on an event
set, which ``xid_events`` drains without waiting.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

logger = logging.getLogger(__name__)

# NVML return codes used here (nvml.h); pynvml exposes the same numbers.
ERROR_NOT_SUPPORTED = 3
ERROR_NOT_FOUND = 6
ERROR_TIMEOUT = 10
ERROR_LIBRARY_NOT_FOUND = 12
ERROR_GPU_IS_LOST = 15
ERROR_UNKNOWN = 999

XID_DRAIN_LIMIT = 1000  # events taken from the event set per call, at most


class NvmlError(Exception):
    """An NVML call failed. ``code`` is NVML's return code (``ERROR_*``)."""

    def __init__(self, code: int, message: str = ""):
        super().__init__(message or f"NVML error {code}")
        self.code = code


@dataclass(frozen=True)
class Utilization:
    gpu_percent: float  # SM busy over NVML's last sample period
    memory_percent: float  # memory controller busy


@dataclass(frozen=True)
class MemoryInfo:
    used_bytes: int
    total_bytes: int


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    used_memory_bytes: int | None  # None where NVML cannot tell (e.g. Windows WDDM)


@dataclass(frozen=True)
class ProcessSample:
    pid: int
    timestamp_us: int  # CPU timestamp of the sample, microseconds
    sm_percent: float


@dataclass(frozen=True)
class XidEvent:
    gpu: int  # NVML index
    code: int  # the XID


class GpuLibrary(Protocol):
    """What the node exporter asks of NVML. Every method may raise ``NvmlError``."""

    def init(self) -> None: ...

    def shutdown(self) -> None: ...

    def device_count(self) -> int: ...

    def uuid(self, gpu: int) -> str: ...

    def name(self, gpu: int) -> str: ...

    def utilization(self, gpu: int) -> Utilization: ...

    def memory(self, gpu: int) -> MemoryInfo: ...

    def temperature_celsius(self, gpu: int) -> float: ...

    def power_watts(self, gpu: int) -> float: ...

    def energy_joules(self, gpu: int) -> float: ...

    def sm_clock_hertz(self, gpu: int) -> float: ...

    def ecc_errors(self, gpu: int, uncorrected: bool) -> int: ...

    def processes(self, gpu: int) -> list[GpuProcess]: ...

    def process_utilization(self, gpu: int, since_us: int) -> list[ProcessSample]: ...

    def xid_events(self) -> list[XidEvent]: ...


class PyNvml:
    """``GpuLibrary`` over the real NVML through pynvml.

    ``init`` imports pynvml and initialises NVML; on a machine without the library or the
    driver it raises ``NvmlError`` and nothing else works. XID events are registered on
    the first ``xid_events`` call, for every GPU that supports them.
    """

    def __init__(self) -> None:
        self._nv: Any = None
        self._handles: dict[int, Any] = {}
        self._event_set: Any = None
        self._events_registered = False

    # -- lifecycle ---------------------------------------------------------------------

    def init(self) -> None:
        try:
            import pynvml  # lazy: only where the exporter runs
        except ImportError as exc:
            raise NvmlError(ERROR_LIBRARY_NOT_FOUND, f"pynvml is not installed: {exc}") from None
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise NvmlError(_code(exc), f"nvmlInit failed: {exc}") from None
        except OSError as exc:  # the shared library loads but is broken
            raise NvmlError(ERROR_LIBRARY_NOT_FOUND, f"nvmlInit failed: {exc}") from None
        self._nv = pynvml
        self._handles = {}

    def shutdown(self) -> None:
        nv = self._nv
        if nv is None:
            return
        self._nv = None
        if self._event_set is not None:
            try:
                nv.nvmlEventSetFree(self._event_set)
            except nv.NVMLError as exc:
                logger.debug("nvmlEventSetFree failed: %s", exc)
            self._event_set = None
            self._events_registered = False
        try:
            nv.nvmlShutdown()
        except nv.NVMLError as exc:
            logger.debug("nvmlShutdown failed: %s", exc)

    # -- calls -------------------------------------------------------------------------

    def _call(self, function: str, *args: Any) -> Any:
        nv = self._nv
        if nv is None:
            raise NvmlError(ERROR_UNKNOWN, "NVML is not initialised")
        try:
            return getattr(nv, function)(*args)
        except nv.NVMLError as exc:
            raise NvmlError(_code(exc), f"{function}: {exc}") from None

    def _handle(self, gpu: int) -> Any:
        handle = self._handles.get(gpu)
        if handle is None:
            handle = self._handles[gpu] = self._call("nvmlDeviceGetHandleByIndex", gpu)
        return handle

    def device_count(self) -> int:
        return int(self._call("nvmlDeviceGetCount"))

    def uuid(self, gpu: int) -> str:
        return _text(self._call("nvmlDeviceGetUUID", self._handle(gpu)))

    def name(self, gpu: int) -> str:
        return _text(self._call("nvmlDeviceGetName", self._handle(gpu)))

    def utilization(self, gpu: int) -> Utilization:
        rates = self._call("nvmlDeviceGetUtilizationRates", self._handle(gpu))
        return Utilization(float(rates.gpu), float(rates.memory))

    def memory(self, gpu: int) -> MemoryInfo:
        info = self._call("nvmlDeviceGetMemoryInfo", self._handle(gpu))
        return MemoryInfo(int(info.used), int(info.total))

    def temperature_celsius(self, gpu: int) -> float:
        sensor = self._nv.NVML_TEMPERATURE_GPU if self._nv is not None else 0
        return float(self._call("nvmlDeviceGetTemperature", self._handle(gpu), sensor))

    def power_watts(self, gpu: int) -> float:
        return float(self._call("nvmlDeviceGetPowerUsage", self._handle(gpu))) / 1000.0

    def energy_joules(self, gpu: int) -> float:
        handle = self._handle(gpu)
        return float(self._call("nvmlDeviceGetTotalEnergyConsumption", handle)) / 1000.0

    def sm_clock_hertz(self, gpu: int) -> float:
        clock_sm = 1  # NVML_CLOCK_SM
        return float(self._call("nvmlDeviceGetClockInfo", self._handle(gpu), clock_sm)) * 1e6

    def ecc_errors(self, gpu: int, uncorrected: bool) -> int:
        error_type = 1 if uncorrected else 0  # NVML_MEMORY_ERROR_TYPE_(UN)CORRECTED
        volatile = 0  # NVML_VOLATILE_ECC: since the driver loaded
        handle = self._handle(gpu)
        return int(self._call("nvmlDeviceGetTotalEccErrors", handle, error_type, volatile))

    def processes(self, gpu: int) -> list[GpuProcess]:
        """Compute and graphics processes on the GPU, one entry per pid."""
        handle = self._handle(gpu)
        found: dict[int, GpuProcess] = {}
        for function in (
            "nvmlDeviceGetComputeRunningProcesses",
            "nvmlDeviceGetGraphicsRunningProcesses",
        ):
            for proc in self._call(function, handle):
                used = proc.usedGpuMemory
                entry = GpuProcess(int(proc.pid), None if used is None else int(used))
                seen = found.get(entry.pid)
                if seen is None or (entry.used_memory_bytes or 0) > (seen.used_memory_bytes or 0):
                    found[entry.pid] = entry
        return list(found.values())

    def process_utilization(self, gpu: int, since_us: int) -> list[ProcessSample]:
        """Samples newer than ``since_us``; none (not an error) where NVML has none."""
        try:
            samples = self._call("nvmlDeviceGetProcessUtilization", self._handle(gpu), since_us)
        except NvmlError as exc:
            if exc.code == ERROR_NOT_FOUND:  # NVML's answer for "no samples since then"
                return []
            raise
        return [ProcessSample(int(s.pid), int(s.timeStamp), float(s.smUtil)) for s in samples]

    def xid_events(self) -> list[XidEvent]:
        """XID events that arrived since the last call, without waiting."""
        if not self._events_registered:
            self._register_xid_events()
        if self._event_set is None:
            return []
        nv = self._nv
        events: list[XidEvent] = []
        for _ in range(XID_DRAIN_LIMIT):
            try:
                data = self._call("nvmlEventSetWait", self._event_set, 0)
            except NvmlError as exc:
                if exc.code != ERROR_TIMEOUT:  # timeout: the set is empty
                    logger.debug("nvmlEventSetWait failed: %s", exc)
                break
            if nv is not None and int(data.eventType) != int(nv.nvmlEventTypeXidCriticalError):
                continue
            try:
                gpu = int(self._call("nvmlDeviceGetIndex", data.device))
            except NvmlError as exc:
                logger.debug("XID %s on a device without an index: %s", data.eventData, exc)
                continue
            events.append(XidEvent(gpu, int(data.eventData)))
        return events

    def _register_xid_events(self) -> None:
        self._events_registered = True
        nv = self._nv
        if nv is None:
            return
        try:
            self._event_set = self._call("nvmlEventSetCreate")
        except NvmlError as exc:
            logger.debug("no NVML event set, so no XID events: %s", exc)
            return
        try:
            count = self.device_count()
        except NvmlError as exc:
            logger.debug("no device count, so no XID events: %s", exc)
            return
        for gpu in range(count):
            try:
                self._call(
                    "nvmlDeviceRegisterEvents",
                    self._handle(gpu),
                    nv.nvmlEventTypeXidCriticalError,
                    self._event_set,
                )
            except NvmlError as exc:  # e.g. not supported on this GPU
                logger.debug("GPU %s does not report XID events: %s", gpu, exc)


def _code(exc: Exception) -> int:
    value = getattr(exc, "value", ERROR_UNKNOWN)
    return int(value) if isinstance(value, int) else ERROR_UNKNOWN


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
