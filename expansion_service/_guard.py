"""Inspect an ExpansionRequest before Beam decodes any of it.

Beam's ExpansionServiceServicer turns the whole request into Python objects, and several of
those turn data into code on this machine: a row field of logical type ``python_callable`` is
exec'd as it is decoded, pickled coders, window fns and transforms are unpickled, a PCollection
whose coder id is not one of the request's coders has the id itself unpickled, and the
``__callable__``/``__constructor__`` constructors run source code. Beam's only check is one glob
on the constructor name. So every part of the request Beam will touch is checked here against
what a client of ``crossinfer.Inference`` legitimately sends, and anything else is refused with
a message that says what and why.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from apache_beam.coders.row_coder import RowCoder
from apache_beam.portability import common_urns
from apache_beam.portability.api import (
    beam_expansion_api_pb2,
    external_transforms_pb2,
    schema_pb2,
)
from apache_beam.typehints.schemas import PYTHON_ANY_URN
from google.protobuf.message import DecodeError

from expansion_service import _encoding, _limits, _options

SERVED_URN = "beam:transforms:python:fully_qualified_named"
SERVED_CONSTRUCTOR = "crossinfer.Inference"
# Every constructor served: Inference, and Prepare (Beam's MLTransform with plain values).
SERVED_CONSTRUCTORS = (SERVED_CONSTRUCTOR, "crossinfer.Prepare")
# The same two names as one glob, for Beam's own filter (fnmatch has no alternation; the
# check above is exact).
SERVED_GLOB = "crossinfer.[IP][nr][fe][ep][ra][er]*"

_PYTHON_CALLABLE_URN = common_urns.python_callable.urn
_CODE_CONSTRUCTORS = ("__callable__", "__constructor__")

# Coders that Beam builds from their URN and component coders alone: no pickles, no code.
_STANDARD_CODERS = frozenset(c.urn for c in (
    common_urns.coders.BOOL, common_urns.coders.BYTES, common_urns.coders.DOUBLE,
    common_urns.coders.VARINT, common_urns.coders.STRING_UTF8, common_urns.coders.KV,
    common_urns.coders.ITERABLE, common_urns.coders.STATE_BACKED_ITERABLE,
    common_urns.coders.LENGTH_PREFIX, common_urns.coders.NULLABLE,
    common_urns.coders.GLOBAL_WINDOW, common_urns.coders.INTERVAL_WINDOW,
    common_urns.coders.CUSTOM_WINDOW, common_urns.coders.WINDOWED_VALUE,
    common_urns.coders.PARAM_WINDOWED_VALUE, common_urns.coders.TIMER,
    common_urns.coders.SHARDED_KEY, common_urns.coders.ROW,
)) | {"beam:coder:tuple:v1", "beam:timestamp_prefixed_opaque_window_coder:v1"}

_STANDARD_WINDOW_FNS = frozenset(w.urn for w in (
    common_urns.global_windows, common_urns.fixed_windows,
    common_urns.sliding_windows, common_urns.session_windows,
))

# Logical types a data row (the input PCollection's schema) may use: the standard ones Beam's
# Python SDK implements as plain conversions. Never python_callable (code) or pythonsdk_any
# (pickles).
_DATA_LOGICAL_TYPES = frozenset(t.urn for t in (
    common_urns.millis_instant, common_urns.micros_instant, common_urns.timestamp,
    common_urns.date, common_urns.decimal, common_urns.fixed_bytes, common_urns.var_bytes,
    common_urns.fixed_char, common_urns.var_char,
)) | {"beam:logical_type:fixed_decimal:v1", "beam:logical_type:javasdk_time:v1",
      "beam:logical_type:javasdk_date:v1"}

# Transforms a client sends as stand-in producers of its input PCollections.
_PRODUCER_TRANSFORMS = frozenset({common_urns.primitives.IMPULSE.urn})

_NEVER_RUN = "this service never runs code or unpickles objects sent in a request"
_PLAIN = ("crossinfer.Inference takes plain values only: numbers, strings, booleans, bytes, and "
          "lists, maps and rows of those")


class Rejected(Exception):
    """The request asks for something this service does not do; the message says what and why."""


@dataclass(frozen=True)
class Inspected:
    """A request that passed inspection, ready for Beam."""

    request: beam_expansion_api_pb2.ExpansionRequest
    constructor: str
    dropped_options: list[str]
    dropped_output_coders: list[str]


def inspect(request: beam_expansion_api_pb2.ExpansionRequest,
            new_id: Callable[[], str] = lambda: str(uuid.uuid4())) -> Inspected:
    """Check ``request``; return a copy that is safe to hand to Beam, or raise Rejected.

    ``new_id`` gives the payload's schemas their ids: ids no registered type has.
    """
    try:
        return _inspect(request, new_id)
    except _limits.TooLarge as e:
        raise Rejected(f"{e} (a limit of this service)") from None


def _inspect(request: beam_expansion_api_pb2.ExpansionRequest,
             new_id: Callable[[], str]) -> Inspected:
    _limits.check_request(request)
    spec = request.transform.spec
    if spec.urn != SERVED_URN:
        raise Rejected(
            f"transform URN {spec.urn!r} is not served: this service expands only "
            f"{SERVED_CONSTRUCTOR} (URN {SERVED_URN})")
    try:
        payload = external_transforms_pb2.ExternalConfigurationPayload.FromString(spec.payload)
    except DecodeError as e:
        raise Rejected(f"the transform payload is not an ExternalConfigurationPayload ({e})")

    _limits.check_schema(payload.schema, "the payload")
    _check_payload_schema(payload.schema)
    _check_row_coder_sizes(request)
    unused_coders, dropped_requests = _check_components(request)
    _rename_schemas(payload.schema, new_id)
    constructor = _check_payload_values(payload)

    safe = beam_expansion_api_pb2.ExpansionRequest()
    safe.CopyFrom(request)
    safe.transform.spec.payload = payload.SerializeToString()
    for coder_id in unused_coders:
        del safe.components.coders[coder_id]
    for tag in dropped_requests:
        del safe.output_coder_requests[tag]
    kept, dropped = _options.client_options(request.pipeline_options)
    safe.pipeline_options.CopyFrom(kept)
    return Inspected(safe, constructor, dropped, dropped_requests)


# --- the payload: {constructor: str, args: row, kwargs: row} -------------------------------

def _check_payload_schema(schema: schema_pb2.Schema) -> None:
    fields = {f.name: f for f in schema.fields}
    unexpected = sorted(set(fields) - {"constructor", "args", "kwargs"})
    if unexpected:
        raise Rejected(f"unexpected payload field(s) {unexpected}: a fully qualified named "
                       "transform payload has only constructor, args and kwargs")
    constructor = fields.get("constructor")
    if constructor is None or constructor.type.WhichOneof("type_info") != "atomic_type" or \
            constructor.type.atomic_type != schema_pb2.STRING:
        raise Rejected("the payload's constructor field must be a string")
    args = fields.get("args")
    if args is not None and args.type.WhichOneof("type_info") != "row_type":
        raise Rejected("the payload's args field must be a row")
    kwargs = fields.get("kwargs")
    if kwargs is not None:
        kind = kwargs.type.WhichOneof("type_info")
        if kind == "map_type" and not _is_string(kwargs.type.map_type.key_type):
            raise Rejected("the payload's kwargs map must have string keys")
        if kind not in ("row_type", "map_type"):
            raise Rejected("the payload's kwargs field must be a row (or a map by name)")
    _check_schema(schema, "payload", "", logical_ok=frozenset())


def _check_payload_values(payload: external_transforms_pb2.ExternalConfigurationPayload) -> str:
    # Safe now: the schema holds plain types only, so decoding runs no code, and the bytes fit
    # the schema, so Beam's decoder (which checks no bounds) reads none beyond them.
    try:
        _encoding.check_row(payload.schema, payload.payload)
    except _encoding.Malformed as e:
        raise Rejected(f"the transform payload does not decode with its own schema ({e})")
    try:
        row = RowCoder(payload.schema).decode(payload.payload)
    except Exception as e:  # noqa: BLE001 - any decoding failure is the client's malformed payload
        raise Rejected(f"the transform payload does not decode with its own schema "
                       f"({type(e).__name__}: {e})")
    constructor = getattr(row, "constructor", None)
    if constructor in _CODE_CONSTRUCTORS:
        raise Rejected(f"constructor {constructor!r} carries Python source code to run; "
                       f"{_NEVER_RUN}, and expands only {' and '.join(SERVED_CONSTRUCTORS)}")
    if constructor not in SERVED_CONSTRUCTORS:
        raise Rejected(f"constructor {constructor!r} is not served: this service expands only "
                       f"{' and '.join(SERVED_CONSTRUCTORS)}")
    _limits.check_values(getattr(row, "kwargs", None))
    args = tuple(getattr(row, "args", None) or ())
    if args:
        raise Rejected(f"positional arguments are not accepted ({len(args)} given): "
                       f"{constructor} takes keyword arguments only")
    return constructor


def _is_string(field_type: schema_pb2.FieldType) -> bool:
    return (field_type.WhichOneof("type_info") == "atomic_type"
            and field_type.atomic_type == schema_pb2.STRING)


# --- schemas, walked all the way down ------------------------------------------------------

def _check_schema(schema: schema_pb2.Schema, owner: str, where: str, *,
                  logical_ok: frozenset) -> None:
    """Walk every field (and option) type of ``schema``; ``owner`` names it in messages."""
    check = lambda t, path: _check_type(t, owner, path, logical_ok=logical_ok)  # noqa: E731
    for option in schema.options:
        check(option.type, f"{where}(option {option.name})")
    for field in schema.fields:
        path = f"{where}{field.name}"
        for option in field.options:
            check(option.type, f"{path} (option {option.name})")
        check(field.type, path)


def _check_type(field_type: schema_pb2.FieldType, owner: str, path: str, *,
                logical_ok: frozenset) -> None:
    check = lambda t, p: _check_type(t, owner, p, logical_ok=logical_ok)  # noqa: E731
    kind = field_type.WhichOneof("type_info")
    if kind == "atomic_type":
        return
    if kind == "array_type":
        check(field_type.array_type.element_type, f"{path}[]")
    elif kind == "iterable_type":
        check(field_type.iterable_type.element_type, f"{path}[]")
    elif kind == "map_type":
        check(field_type.map_type.key_type, f"{path}{{key}}")
        check(field_type.map_type.value_type, f"{path}{{value}}")
    elif kind == "row_type":
        _check_schema(field_type.row_type.schema, owner, f"{path}.", logical_ok=logical_ok)
    elif kind == "logical_type":
        logical = field_type.logical_type
        field = f"{owner} field {path!r} has logical type {logical.urn}"
        if logical.urn == _PYTHON_CALLABLE_URN:
            raise Rejected(f"{field} (Python source code, which Beam runs as it decodes the "
                           f"value); {_NEVER_RUN}")
        if logical.urn == PYTHON_ANY_URN:
            raise Rejected(f"{field} (a pickled Python value); {_NEVER_RUN}")
        if logical.urn not in logical_ok:
            raise Rejected(f"{field}: " + (_PLAIN if not logical_ok
                                            else "not one this service decodes"))
        if logical.HasField("representation"):
            check(logical.representation, path)
        if logical.HasField("argument_type"):
            check(logical.argument_type, f"{path} (argument)")
    else:
        raise Rejected(f"{owner} field {path!r} has no type")


def _rename_schemas(schema: schema_pb2.Schema, new_id: Callable[[], str]) -> None:
    # Beam decodes a row as the user type registered under its schema id, if there is one;
    # fresh ids make the payload decode into plain generated rows, whatever ids a client picks.
    schema.id = new_id()
    for field in schema.fields:
        _rename_in_type(field.type, new_id)


def _rename_in_type(field_type: schema_pb2.FieldType, new_id: Callable[[], str]) -> None:
    kind = field_type.WhichOneof("type_info")
    if kind == "row_type":
        _rename_schemas(field_type.row_type.schema, new_id)
    elif kind == "array_type":
        _rename_in_type(field_type.array_type.element_type, new_id)
    elif kind == "iterable_type":
        _rename_in_type(field_type.iterable_type.element_type, new_id)
    elif kind == "map_type":
        _rename_in_type(field_type.map_type.key_type, new_id)
        _rename_in_type(field_type.map_type.value_type, new_id)


def _check_row_coder_sizes(request: beam_expansion_api_pb2.ExpansionRequest) -> None:
    # Every row coder, used or not: Beam may convert any coder the request carries.
    for coder_id, coder in request.components.coders.items():
        if coder.spec.urn == common_urns.coders.ROW.urn:
            try:
                schema = schema_pb2.Schema.FromString(coder.spec.payload)
            except DecodeError as e:
                raise Rejected(f"row coder {coder_id!r} does not carry a schema ({e})")
            _limits.check_schema(schema, f"row coder {coder_id!r}")


# --- components: the input PCollections, their coders, windowing and stand-in producers -----

def _check_components(
        request: beam_expansion_api_pb2.ExpansionRequest) -> tuple[list[str], list[str]]:
    """Check what Beam decodes; return (coders to remove, output coder requests to drop)."""
    components = request.components
    coders = components.coders
    for t_id, t in components.transforms.items():
        if t.spec.urn not in _PRODUCER_TRANSFORMS:
            raise Rejected(
                f"component transform {t_id!r} has URN {t.spec.urn!r}; a request may carry only "
                "impulse stand-ins for the producers of its inputs")
    for tag, pc_id in request.transform.inputs.items():
        if pc_id not in components.pcollections:
            raise Rejected(f"input {tag!r} names PCollection {pc_id!r}, which the request "
                           "does not contain")
    used: set[str] = set()
    for ws_id, ws in components.windowing_strategies.items():
        if ws.window_fn.urn not in _STANDARD_WINDOW_FNS:
            raise Rejected(
                f"windowing strategy {ws_id!r} uses window fn {ws.window_fn.urn!r}; only the "
                f"standard global, fixed, sliding and session windows are accepted ({_NEVER_RUN})")
        _check_coder(ws.window_coder_id, f"windowing strategy {ws_id!r}", coders, used)
    for pc_id, pc in components.pcollections.items():
        if pc.windowing_strategy_id not in components.windowing_strategies:
            raise Rejected(f"PCollection {pc_id!r} names windowing strategy "
                           f"{pc.windowing_strategy_id!r}, which the request does not contain")
        _check_coder(pc.coder_id, f"PCollection {pc_id!r}", coders, used)
    # An output coder request only asks for an output type hint. A Python client always sends
    # one, as a pickled FastPrimitivesCoder: such a request is dropped, never decoded.
    dropped_requests = []
    for tag, coder_id in request.output_coder_requests.items():
        _need_coder(coder_id, f"output coder request {tag!r}", coders)
        if _is_safe(coder_id, coders):
            _check_coder(coder_id, f"output coder request {tag!r}", coders, used)
        else:
            dropped_requests.append(tag)
    # Beam never decodes a coder nothing uses; the unsafe ones are removed all the same.
    unused = [c for c in coders if c not in used and not _is_safe(c, coders)]
    return unused, dropped_requests


def _need_coder(coder_id: str, who: str, coders) -> None:
    if coder_id not in coders:
        shown = coder_id if len(coder_id) <= 60 else coder_id[:57] + "..."
        raise Rejected(f"{who} names coder {shown!r}, which the request does not contain "
                       f"(Beam would unpickle the id itself; {_NEVER_RUN})")


def _is_safe(coder_id: str, coders) -> bool:
    try:
        _check_coder(coder_id, "", coders, set())
    except Rejected:
        return False
    return True


_COMPONENT_DEPTH = 32  # coders within coders; a real one nests a handful


def _check_coder(coder_id: str, who: str, coders, seen: set[str],
                 path: tuple[str, ...] = ()) -> None:
    """Check a coder Beam will build, and its component coders; add their ids to ``seen``."""
    _need_coder(coder_id, who, coders)
    # Beam builds a coder's components first, recursively: a cycle recurses until Python's
    # recursion limit, a deep chain nearly so.
    if coder_id in path:
        raise Rejected(f"coder {coder_id!r} is one of its own component coders")
    if len(path) >= _COMPONENT_DEPTH:
        raise Rejected(f"coder {path[0]!r} nests component coders more than "
                       f"{_COMPONENT_DEPTH} deep (a limit of this service)")
    if coder_id in seen:
        return
    seen.add(coder_id)
    coder = coders[coder_id]
    urn = coder.spec.urn
    if urn == common_urns.coders.ROW.urn:
        try:
            schema = schema_pb2.Schema.FromString(coder.spec.payload)
        except DecodeError as e:
            raise Rejected(f"row coder {coder_id!r} does not carry a schema ({e})")
        _check_schema(schema, f"row coder {coder_id!r}", "", logical_ok=_DATA_LOGICAL_TYPES)
    elif urn not in _STANDARD_CODERS:
        what = ("is a pickled Python object" if "pickled" in urn
                else "is not one of Beam's standard coders")
        raise Rejected(
            f"coder {coder_id!r} ({urn}), used by {who}, {what}; {_NEVER_RUN}. Inputs must be "
            "schema'd rows (beam:coder:row:v1) under standard coders and windows; from Python, "
            "register RowCoder for the row type")
    for component in coder.component_coder_ids:
        _check_coder(component, f"coder {coder_id!r}", coders, seen, path + (coder_id,))
