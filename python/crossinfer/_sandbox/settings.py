"""What an inspection may spend and what its process is confined to, and the plain-JSON form
of the values that cross to it: shared by the service side (``pool``, ``processes``) and the
inspector side (``inspector``)."""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

LIMIT_HIT = ("Stopped", "MemoryLimit")
HIT_MEMORY_LIMIT = "hit the memory limit"

# How the libraries report an allocation the address-space limit refused: onnxruntime ("Failed
# to allocate memory for requested buffer of size ..."), torch ("DefaultCPUAllocator: can't
# allocate memory"), C++ (std::bad_alloc), the C library (ENOMEM).
ALLOCATION_FAILED = re.compile(
    r"failed to allocate memory|can't allocate memory|cannot allocate memory|bad_alloc|"
    r"out of memory", re.I)


@dataclass(frozen=True)
class Limits:
    """What one model inspection may spend: these for a small model, more for a big one
    (``for_model``), never more than ``ceiling_mb`` of address space."""

    timeout: float = 30.0  # wall-clock seconds, then the child is killed
    cpu_seconds: int = 30  # CPU seconds per inspection (RLIMIT_CPU)
    memory_mb: int = 2048  # address space a child may add beyond its libraries (RLIMIT_AS)
    ceiling_mb: int = 0  # most any inspection may add; 0: the machine's memory

    def ceiling(self) -> int:
        """MiB no inspection goes beyond: the machine's physical memory (a model that needs
        more cannot be loaded here at all), or ``memory_mb`` if that is larger."""
        if self.ceiling_mb > 0:
            return max(self.ceiling_mb, self.memory_mb)
        try:
            physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") >> 20
        except (ValueError, OSError, AttributeError):
            physical = 0
        return max(physical, self.memory_mb)

    def for_model(self, size_bytes: "int | None") -> "Limits":
        """The limits for a model of ``size_bytes`` on disk: a model is read, built and run
        once, so memory grows by MEMORY_PER_BYTE times its size and the time by
        SECONDS_PER_GIB per GiB, up to the ceiling. Unknown or small size: these limits."""
        if not size_bytes or size_bytes < SMALL_MODEL_BYTES:
            return self
        gib = size_bytes / (1 << 30)
        grown = self.memory_mb + (MEMORY_PER_BYTE * size_bytes >> 20)
        memory = min(self.ceiling(), grown)
        return Limits(timeout=self.timeout + SECONDS_PER_GIB * gib,
                      cpu_seconds=self.cpu_seconds + int(SECONDS_PER_GIB * gib + 0.999),
                      memory_mb=max(self.memory_mb, memory), ceiling_mb=self.ceiling_mb)


# A model file's bytes are in memory about three times while it is inspected (the file read,
# the tensors built from it, the library's copy), and reading and building take about this long
# per GiB on a busy 2-core machine.
MEMORY_PER_BYTE = 3
SECONDS_PER_GIB = 30.0
SMALL_MODEL_BYTES = 64 << 20  # below this the limits stay as set


@dataclass(frozen=True)
class Confinement:
    """What the child enforces itself, the same as the service: callables and model roots
    (``held``: the service's open root descriptors, inherited), and what it cannot see."""

    allow: tuple[str, ...]
    model_roots: tuple[str, ...]
    trusted_model_roots: tuple[str, ...]
    held: tuple = ()  # Repository.held() of the service
    hidden: tuple[str, ...] = ()  # directories covered in the child (the worker pool's)
    network: bool = False  # gs:// roots need it; local ones do not
    weak: bool = False  # a fence the kernel refuses is skipped (--allow-weak-sandbox)



def plain(value: Any) -> Any:
    """kwargs as JSON: rows (NamedTuples) become maps, bytes are tagged."""
    if hasattr(value, "_asdict"):
        return {k: plain(v) for k, v in value._asdict().items()}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return {"__bytes__": base64.b64encode(bytes(value)).decode()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"cannot send a {type(value).__name__} to the model inspector")


def unplain(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__bytes__"}:
            return base64.b64decode(value["__bytes__"])
        return {k: unplain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unplain(v) for v in value]
    return value
