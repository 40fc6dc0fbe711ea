"""Resource vectors: CPUs, GPUs and memory, added, subtracted and compared as a whole.

A ``Resources`` value is immutable. ``fits_in`` is true when every component is within
the other's; a small tolerance (``EPSILON``) absorbs float noise from fractional CPUs and
GPUs.

Words: components are always in the order CPUs, GPUs, memory (fields, arguments,
``as_dict``, tuples, JSON, CSV and the CLI's tables), except where a sort puts the scarcest
first and says so (``capacity``: GPUs, CPUs, memory) and in ``dcsched top``, a GPU view.
"""

from __future__ import annotations

from dataclasses import dataclass

from dcsched.core.units import format_bytes

EPSILON = 1e-9
"""The one tolerance of the core's float comparisons (amounts of CPUs and GPUs, and
seconds): two values closer than this are equal. Memory is whole bytes, compared exactly."""


@dataclass(frozen=True, slots=True)
class Resources:
    """An amount of CPUs, GPUs and memory (bytes)."""

    cpus: float = 0.0
    gpus: float = 0.0
    memory: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.cpus + other.cpus, self.gpus + other.gpus, self.memory + other.memory)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.cpus - other.cpus, self.gpus - other.gpus, self.memory - other.memory)

    def scaled(self, factor: int) -> Resources:
        return Resources(self.cpus * factor, self.gpus * factor, self.memory * factor)

    def fits_in(self, capacity: Resources) -> bool:
        return (
            self.cpus <= capacity.cpus + EPSILON
            and self.gpus <= capacity.gpus + EPSILON
            and self.memory <= capacity.memory
        )

    def describe(self) -> str:
        return f"{_num(self.cpus)} CPUs, {_num(self.gpus)} GPUs, {format_bytes(self.memory)}"

    def as_dict(self) -> dict[str, float | int]:
        return {"cpus": self.cpus, "gpus": self.gpus, "memory": self.memory}


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"
