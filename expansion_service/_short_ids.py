"""Metric short ids that no other process of a job reuses, so Prism never mixes two metrics.

Beam's SDK harness names each metric it reports by a short id that it numbers per process
(``sdk_worker.SHORT_ID_CACHE``: "1", "2", ...), while Prism (v2.77) keeps one short-id map per
job, learnt from whichever worker it asks first. When two Python processes serve one job (two
services, or a service and another Python worker), the same id names different metrics; Prism
then decodes a counter's payload as a distribution and panics ("error decoding metrics
beam:metric:user:distribution_int64:v1 ... Min:9223372036854775807 ..."), failing the job.
A reproduction without crossinfer: tests/repro/prism_short_ids.py. Prefixing this process's
ids with a token of its own keeps them apart from every other worker's (Java's read "metricN").
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from typing import Iterable

from crossinfer import _beam

_LOCK = threading.Lock()

# Beam's cache class (an internal: crossinfer/_beam.py), or object on a Beam without it.
_BASE = _beam.short_id_cache_class() or object


class ProcessShortIds(_BASE):  # type: ignore[misc,valid-type]
    """Beam's short-id cache, with every id prefixed by ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def get_short_id(self, monitoring_info) -> str:
        return self.prefix + super().get_short_id(monitoring_info)

    def get_infos(self, short_ids: Iterable[str]) -> dict:
        n = len(self.prefix)
        # An id without our prefix is unknown here: KeyError, like Beam's own cache.
        inner = {sid: sid[n:] if sid.startswith(self.prefix) else "\0" for sid in short_ids}
        infos = super().get_infos(inner.values())
        return {sid: infos[inner[sid]] for sid in inner}


def install() -> str:
    """Makes this process's SDK workers report prefixed short ids; returns the prefix."""
    if _BASE is object:
        # Another Beam: nothing to prefix here; Prism may then mix two processes' metrics.
        logging.getLogger("expansion_service").warning(
            "this Beam has no sdk_worker.SHORT_ID_CACHE: metric short ids are not prefixed")
        return ""
    with _LOCK:
        # Ids handed out before (none in a fresh service) stay unprefixed.
        cache = _beam.replace_short_id_cache(
            lambda current: current if isinstance(current, ProcessShortIds)
            else ProcessShortIds(f"ci{os.getpid():x}{secrets.token_hex(3)}-"))
        return cache.prefix
