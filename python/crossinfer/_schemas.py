"""Row types of the two outputs, and Beam type names as plain strings."""

# No "from __future__ import annotations" here: Beam reads Failure's field types at runtime.

import re
import typing
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Optional

import numpy as np
from apache_beam import coders
from apache_beam.typehints import row_type
from apache_beam.typehints.schemas import named_fields_from_element_type

from crossinfer._errors import ConfigurationError


class Failure(NamedTuple):
    """One input row that did not become a prediction."""

    element: str  # the input row as JSON
    stage: str  # "preprocess", "inference" or "postprocess"
    error: str  # "ExceptionType: message"


coders.registry.register_coder(Failure, coders.RowCoder)

BUILTIN_FIELDS: dict[str, list[tuple[str, Any]]] = {
    "argmax": [("label", int), ("score", float)],
    "regression": [("value", float)],
    "raw": [("output", Sequence[float])],
}

_ATOMIC = {
    "int8": np.int8, "byte": np.int8, "int16": np.int16, "int32": np.int32,
    "int64": int, "long": int, "int": int,
    "float32": np.float32, "float": np.float32, "float64": float, "double": float,
    "string": str, "str": str, "bool": bool, "boolean": bool, "bytes": bytes,
}
_GENERIC = re.compile(r"^(array|list|optional|map)<(.*)>$")


def parse_type(name: str) -> Any:
    """'array<float64>' -> Sequence[float]; see _ATOMIC for the atomic names."""
    text = name.strip().lower().replace(" ", "")
    if text in _ATOMIC:
        return _ATOMIC[text]
    match = _GENERIC.match(text)
    if match:
        kind, inner = match.groups()
        if kind in ("array", "list"):
            return Sequence[parse_type(inner)]
        if kind == "optional":
            return Optional[parse_type(inner)]
        key, _, value = inner.partition(",")
        if value:
            return Mapping[parse_type(key), parse_type(value)]
    raise ConfigurationError(
        f"output_schema type {name!r} is not a Beam type name; use one of "
        f"{', '.join(sorted(_ATOMIC))}, array<T>, optional<T>, map<K,V>")


def input_fields(element_type: Any) -> dict[str, Any]:
    """Field name -> type of a schema'd input PCollection."""
    if isinstance(element_type, type) and hasattr(element_type, "_fields"):
        # A NamedTuple from a module with postponed annotations holds strings; Beam reads
        # those as Any, which another SDK cannot decode. Resolve them.
        try:
            hints = typing.get_type_hints(element_type)
            return {name: hints.get(name, Any) for name in element_type._fields}
        except Exception:  # pylint: disable=broad-except
            pass
    try:
        return dict(named_fields_from_element_type(element_type))
    except (TypeError, ValueError, AttributeError) as e:
        raise ConfigurationError(
            f"the input must be schema'd rows (beam.Row, a NamedTuple, or a Java Row), but its "
            f"element type is {element_type!r}; add .with_output_types(...) or emit beam.Row") from e


def prediction_type(passthrough: Sequence[tuple[str, Any]],
                    result_fields: Sequence[tuple[str, Any]]) -> row_type.RowTypeConstraint:
    """passthrough fields + postprocess fields + model_id, checked for clashes."""
    fields = [*passthrough, *result_fields, ("model_id", str)]
    seen: set[str] = set()
    for name, _ in fields:
        if not name.isidentifier():
            raise ConfigurationError(f"output field name {name!r} is not an identifier")
        if name in seen:
            raise ConfigurationError(
                f"output field {name!r} appears twice (passthrough_fields, the postprocess "
                "fields and model_id must not overlap); rename or drop one")
        seen.add(name)
    try:
        # A NamedTuple is cheaper to build per row than beam.Row, and encodes the same way.
        return row_type.RowTypeConstraint.from_user_type(NamedTuple("Prediction", fields))
    except (TypeError, ValueError):  # e.g. a field name NamedTuple refuses ("_x", "class")
        return row_type.RowTypeConstraint.from_fields(fields)


def is_array_type(t: Any) -> Optional[bool]:
    """True for array/list types, False for scalars, None when unknown (Any)."""
    origin = typing.get_origin(t)
    if origin is typing.Union:
        args = [a for a in typing.get_args(t) if a is not type(None)]
        return is_array_type(args[0]) if len(args) == 1 else None
    if t is typing.Any:
        return None
    if origin is not None:
        return isinstance(origin, type) and issubclass(origin, Sequence) and origin is not str
    if isinstance(t, type):
        if issubclass(t, (str, bytes)):
            return False
        if issubclass(t, (int, float, bool, np.number)):
            return False
        if issubclass(t, np.ndarray):
            return True
    return None
