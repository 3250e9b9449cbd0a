"""The payload's bytes are checked against its schema before Beam's decoder, which checks no
bounds, reads them: valid encodings pass whole, and whatever passes decodes the same whatever
follows it in memory."""

from __future__ import annotations

import random
import uuid

import pytest
from apache_beam.coders.row_coder import RowCoder
from apache_beam.portability.api import schema_pb2
from apache_beam.typehints.schemas import named_tuple_from_schema

from expansion_service import _encoding, _limits

S = schema_pb2
_ATOMIC = [S.INT16, S.INT32, S.INT64, S.BYTE, S.FLOAT, S.DOUBLE, S.STRING, S.BOOLEAN, S.BYTES]
_KEYS = [S.INT32, S.INT64, S.STRING, S.BOOLEAN, S.BYTES]


def _type(rng: random.Random, depth: int, key: bool = False) -> S.FieldType:
    nullable = rng.random() < 0.3
    roll = rng.random() if depth < 3 and not key else 0.0
    if roll < 0.55:
        return S.FieldType(atomic_type=rng.choice(_KEYS if key else _ATOMIC), nullable=nullable)
    if roll < 0.7:
        return S.FieldType(array_type=S.ArrayType(element_type=_type(rng, depth + 1)),
                           nullable=nullable)
    if roll < 0.8:
        return S.FieldType(iterable_type=S.IterableType(element_type=_type(rng, depth + 1)),
                           nullable=nullable)
    if roll < 0.9:
        return S.FieldType(map_type=S.MapType(key_type=_type(rng, depth + 1, key=True),
                                              value_type=_type(rng, depth + 1)),
                           nullable=nullable)
    return S.FieldType(row_type=S.RowType(schema=_schema(rng, depth + 1)), nullable=nullable)


def _schema(rng: random.Random, depth: int = 0) -> S.Schema:
    schema = S.Schema(id=str(uuid.UUID(int=rng.getrandbits(128))), fields=[
        S.Field(name=f"f{i}", type=_type(rng, depth)) for i in range(rng.randint(0, 6))])
    if schema.fields and rng.random() < 0.3:
        positions = list(range(len(schema.fields)))
        rng.shuffle(positions)
        for field, position in zip(schema.fields, positions):
            field.encoding_position = position
        schema.encoding_positions_set = True
    return schema


def _value(rng: random.Random, field_type: S.FieldType):
    if field_type.nullable and rng.random() < 0.3:
        return None
    kind = field_type.WhichOneof("type_info")
    if kind == "atomic_type":
        return {
            S.INT16: lambda: rng.randint(-2 ** 15, 2 ** 15 - 1),
            S.INT32: lambda: rng.randint(-2 ** 31, 2 ** 31 - 1),
            S.INT64: lambda: rng.randint(-2 ** 63, 2 ** 63 - 1),
            S.BYTE: lambda: rng.randint(0, 127),
            S.FLOAT: lambda: rng.random(), S.DOUBLE: lambda: rng.random() * 1e300,
            S.STRING: lambda: "é" * rng.randint(0, 200), S.BOOLEAN: lambda: rng.random() < 0.5,
            S.BYTES: lambda: rng.randbytes(rng.randint(0, 300)),
        }[field_type.atomic_type]()
    if kind in ("array_type", "iterable_type"):
        element = getattr(field_type, kind).element_type
        return [_value(rng, element) for _ in range(rng.randint(0, 4))]
    if kind == "map_type":
        entries = {}
        for _ in range(rng.randint(0, 4)):
            k = _value(rng, field_type.map_type.key_type)
            entries[k] = _value(rng, field_type.map_type.value_type)
        return entries
    return _row_value(rng, field_type.row_type.schema)


def _row_value(rng: random.Random, schema: S.Schema):
    return named_tuple_from_schema(schema)(*[_value(rng, f.type) for f in schema.fields])


def _decoded(schema: S.Schema, data: bytes):
    try:
        return repr(RowCoder(schema).decode(data))
    except Exception as e:  # noqa: BLE001 - the outcome, either way
        return f"{type(e).__name__}: {e}"


def _cases(seed: int, n: int):
    rng = random.Random(seed)
    for _ in range(n):
        schema = _schema(rng)
        yield rng, schema, RowCoder(schema).encode(_row_value(rng, schema))


@pytest.mark.parametrize("seed", range(4))
def test_beams_own_encodings_pass_whole(seed):
    for _, schema, data in _cases(seed, 100):
        assert _encoding.check_row(schema, data) == len(data)


@pytest.mark.parametrize("seed", range(4))
def test_whatever_passes_reads_nothing_beyond_its_bytes(seed):
    # A read past the end would read the padding: two different paddings would decode apart.
    checked = passed = 0
    for rng, schema, data in _cases(100 + seed, 60):
        for _ in range(15):
            bent = bytearray(data)
            op = rng.random()
            if bent and op < 0.4:
                bent[rng.randrange(len(bent))] = rng.choice([0, 1, 0x7F, 0x80, 0xFF,
                                                             rng.randrange(256)])
            elif bent and op < 0.7:
                del bent[rng.randrange(len(bent)):]
            else:
                at = rng.randrange(len(bent) + 1)
                bent[at:at] = rng.choice([b"\xff\xff\xff\x7f", b"\x80" * 10,
                                          b"\xc0\x84\x3d", b"\x00"])
            bent = bytes(bent)
            checked += 1
            try:
                _encoding.check_row(schema, bent)
            except (_encoding.Malformed, _limits.TooLarge):  # a refusal either way
                continue
            passed += 1
            assert _decoded(schema, bent + b"\x00" * 64) == _decoded(schema, bent + b"\xff" * 64)
    assert 0 < passed < checked


def test_lengths_past_the_end_are_refused():
    string = S.FieldType(atomic_type=S.STRING)
    schema = S.Schema(id="s", fields=[S.Field(name="s", type=string)])
    with pytest.raises(_encoding.Malformed, match="past the end"):
        _encoding.check_row(schema, b"\x01\x00\x80\x94\xeb\xdc\x03abc")  # 10^9 bytes
    listed = S.Schema(id="l", fields=[S.Field(name="l", type=S.FieldType(
        array_type=S.ArrayType(element_type=string)))])
    with pytest.raises(_encoding.Malformed, match="elements"):
        _encoding.check_row(listed, b"\x01\x00\x7f\xff\xff\xff\x00")
    with pytest.raises(_encoding.Malformed, match="past the end"):
        _encoding.check_row(schema, b"\x01")  # a varint cut short
