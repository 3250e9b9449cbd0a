"""Keep Beam's global schema registry from growing with every request.

Beam registers every schema it converts, under its id, in a process-wide registry
(``apache_beam.typehints.schemas.SCHEMA_REGISTRY``), and the generated NamedTuple class in the
coder registry; nothing ever removes them. A service converts the schemas of every request
(the guard gives the payload fresh ids so no client can pick a registered type), so each
request, rejected or not, used to leave ~27 KiB behind for good. Beam has no public way to
convert with a throwaway registry along the whole expansion path, so the janitor sweeps
instead: whenever no expansion is in flight it removes every registration made since the
service started; when too many have piled up under continuous load, new expansions wait
(briefly) for the ones in flight to finish so a sweep can run.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
import time
from collections.abc import Iterator

from apache_beam import coders
from apache_beam.typehints.schemas import SCHEMA_REGISTRY

_LOGGER = logging.getLogger("expansion_service")


class SchemaJanitor:
    """``with janitor.expansion():`` around each expansion."""

    def __init__(self, most: int = 5_000, wait: float = 30.0) -> None:
        self._most, self._wait = most, wait
        self._cond = threading.Condition()
        self._active = 0
        self._baseline = frozenset(SCHEMA_REGISTRY.by_id)
        self._trimmed = 0.0
        try:
            self._libc = ctypes.CDLL(None)
            # glibc: a few malloc arenas, not one per busy RPC thread (8 x cores), so freed
            # request memory is reused instead of spread over arenas that only grow.
            self._libc.mallopt(-8, 2)  # M_ARENA_MAX
        except (OSError, AttributeError):
            self._libc = None

    @contextlib.contextmanager
    def expansion(self) -> Iterator[None]:
        with self._cond:
            if len(SCHEMA_REGISTRY.by_id) - len(self._baseline) > self._most:
                self._cond.wait_for(lambda: self._active == 0, timeout=self._wait)
                if self._active == 0:
                    self._sweep()
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                if self._active == 0:
                    self._sweep()
                    self._cond.notify_all()

    def _sweep(self) -> None:
        by_id = SCHEMA_REGISTRY.by_id
        # Only the NamedTuples Beam generated from request schemas; a class defined in code
        # (crossinfer's own row types, registered on first use) stays registered for good.
        added = [i for i, entry in list(by_id.items()) if i not in self._baseline
                 and getattr(entry[0], "__name__", "").startswith("BeamSchema_")]
        if not added:
            return
        # The coder registry has no public removal: its mapping is reached by name, and only
        # the classes generated for the swept schemas are removed from it (and from its
        # public list of custom types).
        registered = getattr(coders.registry, "_coders", None)
        swept = set()
        for schema_id in added:
            entry = by_id.pop(schema_id, None)
            if entry is not None:
                swept.add(entry[0])
                if isinstance(registered, dict):
                    registered.pop(entry[0], None)
        custom = getattr(coders.registry, "custom_types", None)
        if isinstance(custom, list):
            custom[:] = [t for t in custom if t not in swept]
        now = time.monotonic()
        if self._libc is not None and now - self._trimmed > 5.0:
            # Give what the swept requests freed back to the system (glibc keeps it otherwise).
            self._trimmed = now
            with contextlib.suppress(AttributeError):
                self._libc.malloc_trim(0)
