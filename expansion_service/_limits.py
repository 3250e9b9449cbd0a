"""Bounds on a request, checked on the raw proto before Beam decodes any of it.

Beam's schema-to-type conversion converts each nested row's fields twice (once for the field
types, once for the generated NamedTuple), so its cost doubles with every level of nesting: a
1.3 KB request nested 12 deep cost minutes of CPU. ``conversion_work`` counts exactly the type
conversions Beam will do for a schema, and a request is refused if the total is too high, as
well as for its size, its nesting, its field counts and its string lengths. Values (decoded
from the payload once its schema is known to be plain and small) are bounded too: the number of
``models``, string lengths, list sizes, and the numbers that make the service spend memory.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Callable

from apache_beam.portability.api import beam_expansion_api_pb2, schema_pb2

from crossinfer._arguments import service_caps

MAX_REQUEST_BYTES = 4 * 1024 * 1024  # also gRPC's max_receive_message_length
MAX_ROW_DEPTH = 8  # rows within rows (the payload itself is 1, its kwargs 2)
MAX_TYPE_DEPTH = 24  # any type within a type
MAX_FIELDS_PER_SCHEMA = 256
MAX_CONVERSION_WORK = 20_000  # type conversions Beam does per request (~40 us each)
MAX_NAME = 256  # field names, schema ids, option names
MAX_ID = 1024  # component ids, URNs, unique names
MAX_COMPONENTS = {"transforms": 64, "pcollections": 64, "windowing_strategies": 16,
                  "coders": 256, "environments": 16}
MAX_OUTPUT_CODER_REQUESTS = 16
MAX_INPUTS = 16
MAX_PIPELINE_OPTIONS = 256
MAX_PAYLOAD_BYTES = 1024 * 1024
# Decoded values.
MAX_STRING = 64 * 1024
MAX_ITEMS = 10_000  # entries of one list or map
MAX_VALUE_DEPTH = 16
MAX_MODELS = 64
MAX_VALUES = 100_000  # values of every list and map in one payload, together
MAX_SHOWN = 200  # characters of one value in a log line or an error


def shown(value: object) -> str:
    """``repr(value)``, cut to MAX_SHOWN characters: what logs and errors quote of a value."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 3] + "..."


_QUOTED = re.compile("|".join(
    q + r"(?:[^" + q + r"\\\n]|\\.){%d,}" % MAX_SHOWN + q for q in ("'", '"')))


_LONG_WORD = re.compile(r"\S{%d,}" % (MAX_SHOWN + 1))


def clip(text: str, most: int = 2000) -> str:
    """``text`` with every quoted value over MAX_SHOWN characters cut, and ``most`` in all: a
    message may quote what a client sent (a 60,000-character version string, three times)."""
    text = _QUOTED.sub(lambda m: m.group(0)[:MAX_SHOWN - 4] + "...'", text)
    text = _LONG_WORD.sub(lambda m: m.group(0)[:MAX_SHOWN - 3] + "...", text)
    return text if len(text) <= most else text[:most - 3] + "..."
# Numbers that make the service (its in-process worker pool) spend memory or time: their one
# ceiling is the argument table's, checked here before the transform is built.
NUMBER_CAPS: dict[str, tuple[float, float]] = service_caps()


class TooLarge(Exception):
    """The request exceeds a limit; the message names the limit."""


def check_request(request: beam_expansion_api_pb2.ExpansionRequest) -> None:
    """Sizes and counts of the request as a whole."""
    size = request.ByteSize()
    if size > MAX_REQUEST_BYTES:
        raise TooLarge(f"the request is {size} bytes; at most {MAX_REQUEST_BYTES} are accepted")
    components = request.components
    for name, most in MAX_COMPONENTS.items():
        found = getattr(components, name)
        if len(found) > most:
            raise TooLarge(f"the request carries {len(found)} {name}; at most {most}")
        for key in found:
            _check_string(key, f"a component id in {name}", MAX_ID)
    counts = ((request.output_coder_requests, "output coder requests", MAX_OUTPUT_CODER_REQUESTS),
              (request.transform.inputs, "inputs", MAX_INPUTS),
              (request.transform.outputs, "outputs", MAX_INPUTS),
              (request.pipeline_options.fields, "pipeline options", MAX_PIPELINE_OPTIONS))
    for found, what, most in counts:
        if len(found) > most:
            raise TooLarge(f"the request carries {len(found)} {what}; at most {most}")
    for tag, value in [*request.transform.inputs.items(),
                       *request.output_coder_requests.items()]:
        _check_string(tag, "an input or output tag", MAX_ID)
        _check_string(value, f"the id {tag!r} names", MAX_ID)
    _check_string(request.transform.unique_name, "the transform's unique name", MAX_ID)
    _check_string(request.namespace, "the namespace", MAX_ID)
    if len(request.transform.spec.payload) > MAX_PAYLOAD_BYTES:
        raise TooLarge(f"the transform payload is {len(request.transform.spec.payload)} bytes; "
                       f"at most {MAX_PAYLOAD_BYTES}")


def check_schema(schema: schema_pb2.Schema, owner: str) -> None:
    """Nesting, field counts, names and Beam's conversion cost of ``schema``."""
    work = conversion_work(schema, owner)
    if work > MAX_CONVERSION_WORK:
        raise TooLarge(f"{owner}'s schema is too nested or too wide: decoding it would take "
                       f"{work} type conversions; at most {MAX_CONVERSION_WORK}")


def conversion_work(schema: schema_pb2.Schema, owner: str, rows: int = 1,
                    depth: int = 0) -> int:
    """Type conversions Beam does to turn ``schema`` into Python types; checks shape on the way."""
    if rows > MAX_ROW_DEPTH:
        raise TooLarge(f"{owner} nests rows more than {MAX_ROW_DEPTH} deep")
    if len(schema.fields) > MAX_FIELDS_PER_SCHEMA:
        raise TooLarge(f"{owner} has a row of {len(schema.fields)} fields; at most "
                       f"{MAX_FIELDS_PER_SCHEMA}")
    _check_string(schema.id, f"a schema id in {owner}", MAX_NAME)
    total = 0
    for option in schema.options:
        _check_string(option.name, f"an option name in {owner}", MAX_NAME)
        total += _type_work(option.type, owner, rows, depth)
    for field in schema.fields:
        _check_string(field.name, f"a field name in {owner}", MAX_NAME)
        _check_string(field.description, f"a field description in {owner}", MAX_STRING)
        for option in field.options:
            _check_string(option.name, f"an option name in {owner}", MAX_NAME)
            total += _type_work(option.type, owner, rows, depth)
        total += _type_work(field.type, owner, rows, depth)
        if total > MAX_CONVERSION_WORK:
            return total  # enough to refuse; stop counting
    return total


def _type_work(field_type: schema_pb2.FieldType, owner: str, rows: int, depth: int) -> int:
    if depth > MAX_TYPE_DEPTH:
        raise TooLarge(f"{owner} nests types more than {MAX_TYPE_DEPTH} deep")
    kind = field_type.WhichOneof("type_info")
    sub: Callable[[schema_pb2.FieldType], int] = lambda t: _type_work(  # noqa: E731
        t, owner, rows, depth + 1)
    if kind == "row_type":
        # Beam converts a nested row's fields twice: for the field types and for the NamedTuple.
        return 1 + 2 * conversion_work(field_type.row_type.schema, owner, rows + 1, depth + 1)
    if kind in ("array_type", "iterable_type"):
        return 1 + sub(getattr(field_type, kind).element_type)
    if kind == "map_type":
        return 1 + sub(field_type.map_type.key_type) + sub(field_type.map_type.value_type)
    if kind == "logical_type":
        logical = field_type.logical_type
        _check_string(logical.urn, f"a logical type URN in {owner}", MAX_ID)
        work = 1
        if logical.HasField("representation"):
            work += sub(logical.representation)
        if logical.HasField("argument_type"):
            work += sub(logical.argument_type)
        return work
    return 1


def _check_string(value: str, what: str, most: int) -> None:
    if len(value) > most:
        raise TooLarge(f"{what} is {len(value)} characters long; at most {most}")


def check_values(kwargs: Any) -> None:
    """Bound the decoded keyword arguments: sizes, nesting, models, and the numbers in
    NUMBER_CAPS (their full validation is the transform's own)."""
    _check_value(kwargs, "kwargs", 0)
    items = kwargs._asdict() if hasattr(kwargs, "_asdict") else kwargs
    if not isinstance(items, Mapping):
        return
    models = items.get("models")
    if models is not None:
        count = len(models._asdict() if hasattr(models, "_asdict") else models)
        if count > MAX_MODELS:
            raise TooLarge(f"models names {count} models; this service accepts at most "
                           f"{MAX_MODELS} per transform")
    for name, (low, high) in NUMBER_CAPS.items():
        value = items.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not (
                low <= value <= high):
            raise TooLarge(f"{name}={value!r} is outside what this service accepts "
                           f"[{low:g}, {high:g}]")


def _check_value(value: Any, where: str, depth: int) -> None:
    if depth > MAX_VALUE_DEPTH:
        raise TooLarge(f"{where} nests values more than {MAX_VALUE_DEPTH} deep")
    if isinstance(value, (str, bytes)):
        if len(value) > MAX_STRING:
            raise TooLarge(f"{where} is {len(value)} long; at most {MAX_STRING}")
        return
    if hasattr(value, "_asdict"):
        value = value._asdict()
    if isinstance(value, Mapping):
        if len(value) > MAX_ITEMS:
            raise TooLarge(f"{where} has {len(value)} entries; at most {MAX_ITEMS}")
        for key, item in value.items():
            _check_value(key, f"a key of {where}", depth + 1)
            _check_value(item, f"{where}.{key}" if isinstance(key, str) and len(key) < 64
                         else f"a value of {where}", depth + 1)
    elif isinstance(value, (list, tuple)):
        if len(value) > MAX_ITEMS:
            raise TooLarge(f"{where} has {len(value)} items; at most {MAX_ITEMS}")
        for item in value:
            _check_value(item, f"an item of {where}", depth + 1)
