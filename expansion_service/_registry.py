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

A swept class is not freed at once: a class refers to itself (``__mro__``, its methods), so
only the cyclic garbage collector frees it, and Python runs a full collection only when the
objects that survived the last one have grown by a quarter. In a service that imported Beam,
torch and onnxruntime (~450,000 objects) that is tens of thousands of dead classes, coders and
type constraints, megabytes that come and go in a slow sawtooth and fragment the heap. So
``settle()`` makes everything the service built while starting permanent for the collector
(``gc.freeze``: a full collection then looks only at what requests made, milliseconds instead
of 0.2 s), and after a sweep a janitor thread runs a full collection and gives the freed memory
back to the system, at most once a second under continuous load and within a second of the
service going idle.

The payload's fresh ids come from the janitor too (``schema_id``): Beam interns the name of the
class it generates (``BeamSchema_<id>``), and CPython's table of interned strings (~8 MB here)
never reuses the slot of a freed string, so a new name for every schema made that table
reallocate every few thousand requests. Swept ids are lent again, their names kept interned.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import sys
import threading
import time
import uuid
from collections.abc import Iterator

from apache_beam.typehints.schemas import SCHEMA_REGISTRY

from crossinfer import _beam

_LOGGER = logging.getLogger("expansion_service")


class SchemaJanitor:
    """``with janitor.expansion():`` around each expansion."""

    def __init__(self, most: int = 5_000, wait: float = 30.0, collect_every: float = 0.25) -> None:
        self._most, self._wait, self._every = most, wait, collect_every
        self._cond = threading.Condition()
        self._active = 0
        self._baseline = frozenset(SCHEMA_REGISTRY.by_id)
        # Schema ids for request payloads: swept ids are lent again, with their class names kept
        # interned (see schema_id).
        self._free: list[str] = []
        self._lent: list[str] = []
        self._names: dict[str, str] = {}
        self._swept = threading.Event()  # set: classes were swept since the last collection
        self._collector: threading.Thread | None = None
        try:
            self._libc = ctypes.CDLL(None)
        except OSError:
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

    def schema_id(self) -> str:
        """An id for a request's payload schema, registered to nothing (during an expansion):
        one swept since it was last lent, or a fresh one."""
        with self._cond:
            schema_id = self._free.pop() if self._free else None
            if schema_id is None:
                schema_id = str(uuid.uuid4())
                if len(self._names) < self._most:
                    self._names[schema_id] = sys.intern(
                        "BeamSchema_" + schema_id.replace("-", "_"))
            self._lent.append(schema_id)
            return schema_id

    def _sweep(self) -> None:
        by_id = SCHEMA_REGISTRY.by_id
        # Only the NamedTuples Beam generated from request schemas; a class defined in code
        # (crossinfer's own row types, registered on first use) stays registered for good.
        added = [i for i, entry in list(by_id.items()) if i not in self._baseline
                 and getattr(entry[0], "__name__", "").startswith("BeamSchema_")]
        self._return_lent(added)
        if not added:
            return
        # Only the classes generated for the swept schemas leave the coder registry (which has
        # no public removal: crossinfer._beam).
        swept = set()
        entry = None
        for schema_id in added:
            entry = by_id.pop(schema_id, None)
            if entry is not None:
                swept.add(entry[0])
        _beam.forget_coders(swept)
        del swept, entry  # nothing here may keep a swept class alive past the collection
        self._swept.set()
        if self._collector is None:
            self._collector = threading.Thread(
                target=self._collect, name="schema-janitor", daemon=True)
            self._collector.start()

    def _return_lent(self, swept: list[str]) -> None:
        # No expansion is in flight: a lent id is either registered (and swept now) or unused.
        swept_ids = set(swept)
        for schema_id in self._lent:
            if schema_id in self._names and (
                    schema_id in swept_ids or schema_id not in SCHEMA_REGISTRY.by_id):
                self._free.append(schema_id)
        self._lent.clear()

    def _collect(self) -> None:
        # Not in the request path: a collection runs beside the expansions, never inside one.
        while True:
            self._swept.wait()
            self._swept.clear()
            gc.collect()
            if self._libc is not None:
                # Give what the collection freed back to the system (glibc keeps it otherwise).
                with contextlib.suppress(AttributeError):
                    self._libc.malloc_trim(0)
            time.sleep(self._every)


def settle() -> None:
    """Once the service has started: collect, then make every object that start-up made (the
    imported modules, Beam, torch) permanent for the garbage collector, so full collections
    only look at what requests made."""
    gc.collect()
    gc.freeze()
