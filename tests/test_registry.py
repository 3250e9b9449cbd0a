"""The schema janitor in this process: sweeps, lends swept ids again, collects what it swept."""

from __future__ import annotations

import gc
import time
import weakref

from apache_beam.portability.api import schema_pb2
from apache_beam.typehints.schemas import SCHEMA_REGISTRY, named_tuple_from_schema

from expansion_service import _registry


def _convert(schema_id: str) -> type:
    return named_tuple_from_schema(schema_pb2.Schema(id=schema_id, fields=[schema_pb2.Field(
        name="x", type=schema_pb2.FieldType(atomic_type=schema_pb2.INT64))]))


def test_swept_ids_are_lent_again_and_never_while_registered():
    janitor = _registry.SchemaJanitor()
    with janitor.expansion():
        first, unused = janitor.schema_id(), janitor.schema_id()
        assert first != unused
        generated = weakref.ref(_convert(first))
        assert first in SCHEMA_REGISTRY.by_id
    assert first not in SCHEMA_REGISTRY.by_id  # swept once nothing was in flight
    with janitor.expansion():
        again = {janitor.schema_id(), janitor.schema_id()}
        fresh = janitor.schema_id()
    assert again == {first, unused} and fresh not in again
    # The janitor's thread collects the swept class (it refers to itself: only a full
    # collection frees it).
    deadline = time.monotonic() + 60  # the condition, not the time, ends the wait
    while generated() is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert generated() is None


def test_an_id_in_use_is_not_lent_twice():
    janitor = _registry.SchemaJanitor()
    with janitor.expansion():
        ids = {janitor.schema_id() for _ in range(100)}
        with janitor.expansion():  # a second expansion at once
            assert not ids & {janitor.schema_id() for _ in range(100)}


def test_settle_freezes_what_start_up_made():
    before = gc.get_freeze_count()
    try:
        _registry.settle()
        assert gc.get_freeze_count() > before
    finally:
        gc.unfreeze()
