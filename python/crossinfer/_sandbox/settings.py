"""What an inspection may spend and what its process is confined to, and the plain-JSON form
of the values that cross to it: shared by the service side (``pool``, ``processes``) and the
inspector side (``inspector``)."""

from __future__ import annotations

import base64
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
    """What one model inspection may spend."""

    timeout: float = 30.0  # wall-clock seconds, then the child is killed
    cpu_seconds: int = 30  # CPU seconds per inspection (RLIMIT_CPU)
    memory_mb: int = 2048  # address space a child may add beyond its libraries (RLIMIT_AS)


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
