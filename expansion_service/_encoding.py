"""Check that a row's bytes fit its schema before Beam's row decoder reads them.

Beam's compiled input stream (``apache_beam.coders.stream.InputStream``) checks no bounds: a
string length, list size or varint that runs past the end of the bytes makes it read whatever
memory follows them. The decoded value then carries the service's heap (and a reply that quotes
the value sends it to the client), or the process dies of SIGSEGV. So a payload's encoding is
walked here first, the way ``RowCoder`` decodes it (the same order, the same nullability
rules), with every read checked against the end. Nothing is decoded or allocated on the way.
"""

from __future__ import annotations

from apache_beam.portability.api import schema_pb2

from expansion_service import _limits


class Malformed(ValueError):
    """The bytes do not fit the schema; the message says where."""


# Bytes each fixed-width atomic type takes (BigEndianShort, Byte, SinglePrecisionFloat, Float,
# Boolean coders); the others are varints (INT32, INT64) or length-prefixed (STRING, BYTES).
_FIXED = {schema_pb2.INT16: 2, schema_pb2.BYTE: 1, schema_pb2.FLOAT: 4, schema_pb2.DOUBLE: 8,
          schema_pb2.BOOLEAN: 1}
_VARINT = frozenset({schema_pb2.INT32, schema_pb2.INT64})
_PREFIXED = frozenset({schema_pb2.STRING, schema_pb2.BYTES})


class _Reader:
    __slots__ = ("data", "pos", "values")

    def __init__(self, data: bytes) -> None:
        self.data, self.pos, self.values = data, 0, 0

    def count(self, n: int, where: str) -> None:
        # The decoded-value limits, applied to the counts on the wire before anything is
        # walked: a 1 MB list of a million booleans is refused by its count, not its length.
        if n > _limits.MAX_ITEMS:
            raise _limits.TooLarge(f"{_limits.shown(where)} has {n} items; at most "
                                   f"{_limits.MAX_ITEMS}")
        self.values += n
        if self.values > _limits.MAX_VALUES:
            raise _limits.TooLarge(f"the payload holds more than {_limits.MAX_VALUES} values")

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or n > len(self.data) - self.pos:
            raise Malformed(f"{what}: {n} bytes at offset {self.pos}, past the end "
                            f"({len(self.data)} bytes)")
        self.pos += n
        return self.data[self.pos - n:self.pos]

    def byte(self, what: str) -> int:
        return self.take(1, what)[0]

    def varint(self, what: str) -> int:
        # As Beam reads it: at most 64 bits, two's complement.
        result = shift = 0
        while True:
            byte = self.byte(what)
            bits = byte & 0x7F
            if shift >= 64 or (shift >= 63 and bits > 1):
                raise Malformed(f"{what}: a varint longer than 64 bits")
            result |= bits << shift
            shift += 7
            if not byte & 0x80:
                break
        return result - (1 << 64) if result >= 1 << 63 else result

    def int32(self, what: str) -> int:
        return int.from_bytes(self.take(4, what), "big", signed=True)

    def left(self) -> int:
        return len(self.data) - self.pos


def check_row(schema: schema_pb2.Schema, data: bytes) -> int:
    """Raise Malformed unless ``RowCoder(schema).decode(data)`` reads only within ``data``
    (and _limits.TooLarge past the decoded-value limits); return how many bytes it reads."""
    reader = _Reader(data)
    _row(reader, schema, "row")
    return reader.pos


def _row(reader: _Reader, schema: schema_pb2.Schema, where: str, depth: int = 0) -> None:
    nvals = reader.varint(f"{where}: the number of values")
    mask_len = reader.varint(f"{where}: the null mask's length")
    mask = reader.take(mask_len, f"{where}: the null mask") if mask_len else b""
    fields = list(schema.fields)
    order = range(len(fields))
    if schema.encoding_positions_set:
        positions = [f.encoding_position for f in fields]
        if len(set(positions)) != len(positions):
            raise Malformed(f"{where}: encoding positions that are not distinct")
        order = sorted(range(len(fields)), key=positions.__getitem__)
    for k in range(min(len(fields), nvals)):
        i = order[k]
        if i >> 3 < len(mask) and mask[i >> 3] & (1 << (i & 7)):
            continue  # null
        # A row's own fields are encoded without a null flag (the mask says it).
        _value(reader, fields[i].type, f"{where}.{fields[i].name}", flagged=False, depth=depth)


def _value(reader: _Reader, field_type: schema_pb2.FieldType, where: str, *,
           flagged: bool = True, depth: int = 0) -> None:
    if depth > _limits.MAX_VALUE_DEPTH:
        raise _limits.TooLarge(f"the payload nests values more than {_limits.MAX_VALUE_DEPTH} "
                               "deep")
    if flagged and field_type.nullable:  # NullableCoder: 0 null, 1 present
        flag = reader.byte(f"{where}: the null flag")
        if flag == 0:
            return
        if flag != 1:
            raise Malformed(f"{where}: null flag {flag}")
    kind = field_type.WhichOneof("type_info")
    if kind == "atomic_type":
        atomic = field_type.atomic_type
        if atomic in _VARINT:
            reader.varint(where)
        elif atomic in _PREFIXED:
            length = reader.varint(f"{where}: the length")
            if 0 <= length <= reader.left() and length > _limits.MAX_STRING:
                raise _limits.TooLarge(f"{_limits.shown(where)} is {length} long; at most "
                                       f"{_limits.MAX_STRING}")
            reader.take(length, where)
        elif atomic in _FIXED:
            reader.take(_FIXED[atomic], where)
        else:
            raise Malformed(f"{where}: atomic type {atomic} has no coder")
    elif kind in ("array_type", "iterable_type"):
        _sequence(reader, getattr(field_type, kind).element_type, where, depth)
    elif kind == "map_type":
        size = reader.int32(f"{where}: the map's size")
        if size > reader.left():
            raise Malformed(f"{where}: {size} entries in {reader.left()} bytes")
        reader.count(size, where)
        for n in range(size):
            _value(reader, field_type.map_type.key_type, f"{where}{{key {n}}}", depth=depth + 1)
            _value(reader, field_type.map_type.value_type, f"{where}{{value {n}}}",
                   depth=depth + 1)
    elif kind == "row_type":
        _row(reader, field_type.row_type.schema, where, depth + 1)
    else:
        # Logical types never reach here (the guard refuses them in a payload): fail closed.
        raise Malformed(f"{where}: type {kind} is not checked")


def _sequence(reader: _Reader, element: schema_pb2.FieldType, where: str, depth: int) -> None:
    size = reader.int32(f"{where}: the list's size")
    if size >= 0:
        _elements(reader, element, where, size, depth)
        return
    # IterableCoder's chunked form: counts and their elements, then 0 (or -1 and a token
    # for a list kept in runner state, which Beam cannot read here either).
    total = 0
    while (count := reader.varint(f"{where}: a chunk's count")) > 0:
        total += count
        if total > _limits.MAX_ITEMS:
            reader.count(total, where)
        _elements(reader, element, where, count, depth)
    if count < 0:
        raise Malformed(f"{where}: a list kept in runner state")


def _elements(reader: _Reader, element: schema_pb2.FieldType, where: str, count: int,
              depth: int) -> None:
    # Every element takes at least one byte, so a count beyond the bytes left fails at once.
    if count > reader.left():
        raise Malformed(f"{where}: {count} elements in {reader.left()} bytes")
    reader.count(count, where)
    for n in range(count):
        _value(reader, element, f"{where}[{n}]", depth=depth + 1)
