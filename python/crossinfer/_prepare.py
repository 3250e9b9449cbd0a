"""``crossinfer.Prepare``: Beam's MLTransform (tf.Transform operations) over schema'd rows.

Configured with plain values only, so Java reaches it through the expansion service like
``Inference``. Write mode runs MLTransform (analyse, save the artifacts); read mode applies the
saved tf.Transform graph with Beam's own TFTProcessHandler, reading crossinfer's plain JSON
manifest instead of the jsonpickle file MLTransform would load (jsonpickle builds any class it
names: code from the artifact location). Rows go in as dicts (MLTransform fails on typed rows
with list fields) and come out typed, with the passthrough fields MLTransform's declared type
leaves out.
"""

from __future__ import annotations

import json
import math
import posixpath
import typing
from collections.abc import Sequence
from typing import Any, NamedTuple, Optional, Union

import apache_beam as beam
import numpy as np
from apache_beam.typehints.row_type import RowTypeConstraint
from apache_beam.io.filesystems import FileSystems

from crossinfer import _policy
from crossinfer._emit import FAILURES, failure
from crossinfer._errors import ConfigurationError, InputError, ModelLoadError, OutputError
from crossinfer._errors import describe
from crossinfer._prepare_ops import IDS, NUMBER, OPERATIONS, STRING, Step, kind_of, parse
from crossinfer._schemas import Failure, input_fields
from crossinfer._version import check_client

PREPARED = "prepared"
MANIFEST = "crossinfer_prepare.json"
_FORMAT = "crossinfer.Prepare/1"
_GRAPH = "transform_fn/saved_model.pb"
_INSTALL = "pip install 'crossinfer[prepare]' (tensorflow-transform)"
_WHAT = "a tf.Transform graph (a TensorFlow SavedModel)"


def _tft_handlers() -> Any:
    try:
        from apache_beam.ml.transforms import handlers
    except ImportError as e:
        raise ConfigurationError(f"Prepare needs tf.Transform: {_INSTALL} ({e})") from None
    return handlers


class _Plan(NamedTuple):
    steps: list[Step]
    feed: dict[str, str]  # input column -> NUMBER / STRING, as MLTransform is fed it
    scalars: frozenset[str]  # output columns that stay one value per row


def _plan(steps: list[Step], fields: dict[str, Any], passthrough: Sequence[str]) -> _Plan:
    """Check the operations against the input schema; say how each column is fed and typed."""
    current: dict[str, tuple[str, bool]] = {}  # column -> (kind, scalar)
    feed: dict[str, str] = {}
    for i, step in enumerate(steps):
        op = OPERATIONS[step.name]
        for column in step.columns:
            if column not in current:
                if column not in fields:
                    raise ConfigurationError(
                        f"operations[{i}] ({step.name}): column {column!r} is not a field of "
                        f"the input rows (they have {', '.join(sorted(fields))}); name one of "
                        "those, or add the field to the rows before Prepare")
                kind, listed = kind_of(fields[column])
                if kind is None:
                    raise ConfigurationError(
                        f"operations[{i}] ({step.name}): column {column!r} has type "
                        f"{fields[column]!r}; Prepare takes numbers, strings, or lists of them")
                current[column] = (kind, not listed)
                feed[column] = kind
            kind, scalar = current[column]
            if kind != op.takes:
                fix = ("put ComputeAndApplyVocabulary on it first" if op.takes == IDS
                       else f"use an operation that takes {kind} values")
                raise ConfigurationError(
                    f"operations[{i}] ({step.name}) takes {op.takes} but column {column!r} "
                    f"holds {kind} values here; {fix}")
            current[column] = (op.gives, scalar and op.keeps_scalars(step.args))
            if step.name == "TFIDF":
                current[f"{column}_vocab_index"] = (IDS, False)
                current[f"{column}_tfidf_weight"] = (NUMBER, False)
    for name in passthrough:
        if name not in fields:
            raise ConfigurationError(
                f"passthrough_fields: {name!r} is not a field of the input rows (they have "
                f"{', '.join(sorted(fields))})")
        if name in current:
            raise ConfigurationError(
                f"passthrough_fields: {name!r} is also a column the operations write; keep it "
                "in one of the two (copy it to a new field before Prepare to keep both)")
    return _Plan(steps, feed, frozenset(c for c, (_, s) in current.items() if s))


def _beam_type(column: str, declared: Any, scalar: bool) -> Any:
    """MLTransform's declared ``Sequence[numpy type]`` -> a type Java reads."""
    inner = (typing.get_args(declared) or (Any,))[0]
    if isinstance(inner, type) and issubclass(inner, np.integer):
        t: Any = int
    elif isinstance(inner, type) and issubclass(inner, np.floating):
        t = float
    elif inner in (bytes, str):
        t = str
    else:
        raise ConfigurationError(f"MLTransform gives column {column!r} the type {declared!r}, "
                                 "which Prepare cannot type for Java")
    return t if scalar else Sequence[t]


class _ToDicts(beam.DoFn):
    """Row -> the dict MLTransform takes (operation columns fed as float or str, passthrough
    fields as they are); a row MLTransform would fail on is a failure instead."""

    def __init__(self, feed: dict[str, str], passthrough: Sequence[str]) -> None:
        self._feed = feed
        self._passthrough = tuple(passthrough)

    def process(self, row: Any):
        try:
            out = {name: getattr(row, name) for name in self._passthrough}
            for column, kind in self._feed.items():
                out[column] = _fed(column, getattr(row, column, None), kind)
            yield out
        except Exception as e:  # pylint: disable=broad-except
            yield failure(row, "prepare", describe(e))


def _fed(column: str, value: Any, kind: str) -> Any:
    if value is None:
        raise InputError(f"field {column!r} is null")
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_fed(column, v, kind) for v in value]
    if kind == STRING:
        if isinstance(value, bytes):
            return value.decode("utf-8")
        if not isinstance(value, str):
            raise InputError(f"field {column!r} holds {type(value).__name__}, not a string")
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise InputError(f"field {column!r} holds {type(value).__name__}, not a number")
    if not math.isfinite(float(value)):
        raise InputError(f"field {column!r} is {value!r}; Prepare takes finite numbers")
    return float(value)


class _ToRows(beam.DoFn):
    """MLTransform's element (numpy arrays) -> the typed output row."""

    def __init__(self, names: Sequence[str], scalars: frozenset[str],
                 strings: frozenset[str]) -> None:
        self._names = tuple(names)
        self._scalars = scalars
        self._strings = strings

    def process(self, element: Any):
        values = element.as_dict() if hasattr(element, "as_dict") else dict(element)
        try:
            out = {}
            for name in self._names:
                value = values[name]
                if name in self._strings or name in self._scalars or isinstance(value, np.ndarray):
                    value = _plain(name, value, name in self._scalars)
                out[name] = value
            yield beam.Row(**out)
        except Exception as e:  # pylint: disable=broad-except
            yield failure(values, "output", describe(e))


def _plain(name: str, value: Any, scalar: bool) -> Any:
    items = [v.decode("utf-8") if isinstance(v, bytes) else v
             for v in np.asarray(value).reshape(-1).tolist()]
    if not scalar:
        return items
    if len(items) != 1:
        raise OutputError(f"column {name!r} has {len(items)} values after preparation, "
                          "where its input held one")
    return items[0]


class Prepare(beam.PTransform):
    """Beam's MLTransform over schema'd rows, configured with plain values.

    ``operations``: a list of dicts, each ``{"operation": NAME, "columns": [...], ARG: value}``
    (the names and arguments of ``apache_beam.ml.transforms.tft``), applied in order, or that
    list as JSON text (how it crosses the expansion service); write
    mode (``write_artifact_location``) analyses the rows and saves the artifacts, read mode
    (``read_artifact_location``) applies saved ones. Returns ``{"prepared": ..., "failures":
    ...}``: typed rows (``passthrough_fields`` + every column the operations write) and one
    failure row per input row that could not be prepared.
    """

    def __init__(self, *, operations: Optional[Union[list[dict[str, Any]], str]] = None,
                 write_artifact_location: Optional[str] = None,
                 read_artifact_location: Optional[str] = None,
                 passthrough_fields: Optional[list[str]] = None,
                 client_version: Optional[str] = None) -> None:
        super().__init__()
        check_client(client_version)  # the Java library's version must be the service's
        self._policy = _policy.current()
        if bool(write_artifact_location) == bool(read_artifact_location):
            raise ConfigurationError(
                "Prepare needs exactly one of write_artifact_location (analyse the rows and "
                "save the artifacts there) and read_artifact_location (apply artifacts a "
                "write job saved)")
        for name, value in (("write_artifact_location", write_artifact_location),
                            ("read_artifact_location", read_artifact_location)):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigurationError(f"{name} must be a directory path or URI")
        passthrough = list(passthrough_fields or [])
        if not all(isinstance(p, str) and p for p in passthrough) or \
                len(set(passthrough)) != len(passthrough):
            raise ConfigurationError("passthrough_fields must be a list of distinct field names")
        self._passthrough = passthrough
        self._write = write_artifact_location.rstrip("/") if write_artifact_location else None
        self._read = read_artifact_location.rstrip("/") if read_artifact_location else None
        if self._write:
            self._steps = parse(operations)
            self._check_write_location()
            self._tft_dir: Optional[str] = None
        else:
            if operations:
                raise ConfigurationError(
                    "operations are not given in read mode: the artifacts at "
                    "read_artifact_location hold them; drop operations, or write new "
                    "artifacts with write_artifact_location")
            self._steps, self._tft_dir = self._read_manifest()
        _tft_handlers()  # said at construction, not at expansion

    def default_label(self) -> str:
        return "Prepare(write)" if self._write else "Prepare(read)"

    # --- artifact locations ------------------------------------------------------------------
    def _check_write_location(self) -> None:
        location = self._write
        repository = self._policy.repository
        if repository is not None:
            # Artifacts are read back as tf.Transform graphs, which only trusted roots hold.
            root, _, _ = repository._locate(posixpath.join(location, MANIFEST),
                                            "write_artifact_location")
            if not root.trusted:
                raise ModelLoadError(
                    f"write_artifact_location={location!r} is under a model root that is not "
                    f"trusted; the artifacts are {_WHAT}, read only from a trusted model root "
                    "(--trusted-model-root; from Java CrossPrepare.withTrustedModelRoots): "
                    "write them there")
        if FileSystems.exists(location) and FileSystems.match([location + "/*"])[0].metadata_list:
            raise ConfigurationError(
                f"write_artifact_location={location!r} already holds files; each write job "
                "needs a new directory (or read those artifacts with read_artifact_location)")

    def _read_manifest(self) -> tuple[list[Step], str]:
        location = self._read
        manifest = posixpath.join(location, MANIFEST)
        missing = ConfigurationError(
            f"read_artifact_location={location!r} holds no Prepare artifacts ({MANIFEST} is "
            "missing): run Prepare with write_artifact_location set to it first, and let that "
            "job finish")
        repository = self._policy.repository
        if repository is not None:
            # A tf.Transform graph is code (its ops may read files): trusted roots only.
            try:
                repository.admit(manifest, code=True, what=_WHAT,
                                 argument="read_artifact_location")
            except ModelLoadError as e:
                if "No such file" in str(e) or "ENOENT" in str(e):
                    raise missing from None
                raise
            text = self._policy.read(manifest)
        else:
            if not FileSystems.exists(manifest):
                raise missing
            with FileSystems.open(manifest) as f:
                text = f.read()
        try:
            data = json.loads(text)
            if data.get("format") != _FORMAT:
                raise ValueError(f"format {data.get('format')!r}")
            tft_dir = data["tft_directory"]
            if not isinstance(tft_dir, str) or not tft_dir.isalnum():
                raise ValueError("tft_directory")
            steps = parse(data["operations"], f"{MANIFEST} operations")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ConfigurationError(
                f"read_artifact_location={location!r}: {MANIFEST} is not a Prepare manifest "
                f"({type(e).__name__}: {e}); write the artifacts again") from None
        graph = posixpath.join(location, tft_dir, _GRAPH)
        if repository is not None:
            try:
                repository.admit(graph, code=True, what=_WHAT, argument="read_artifact_location")
            except ModelLoadError:
                raise ConfigurationError(
                    f"read_artifact_location={location!r} has no saved tf.Transform graph yet: "
                    "the write job has not finished (or failed); run it to the end") from None
        elif not FileSystems.exists(graph):
            raise ConfigurationError(
                f"read_artifact_location={location!r} has no saved tf.Transform graph yet: the "
                "write job has not finished (or failed); run it to the end")
        return steps, tft_dir

    def _write_manifest(self) -> None:
        location = self._write
        found = sorted({posixpath.dirname(posixpath.dirname(m.path)) for m in FileSystems.match(
            [location + "/*/raw_data_metadata/*"])[0].metadata_list})
        if len(found) != 1:
            raise ConfigurationError(
                f"write_artifact_location={location!r}: expected MLTransform's one tf.Transform "
                f"directory, found {len(found)}; name a new, empty directory")
        tft_dir = posixpath.basename(found[0])
        body = json.dumps({"format": _FORMAT, "tft_directory": tft_dir,
                           "operations": [s.plain() for s in self._steps]}, indent=1)
        with FileSystems.create(posixpath.join(location, MANIFEST)) as f:
            f.write(body.encode("utf-8"))

    # --- the pipeline ------------------------------------------------------------------------
    def expand(self, pcoll: beam.PCollection) -> dict[str, beam.PCollection]:
        fields = input_fields(pcoll.element_type)
        plan = _plan(self._steps, fields, self._passthrough)
        handlers = _tft_handlers()
        fed = pcoll | "ToDicts" >> beam.ParDo(_ToDicts(plan.feed, self._passthrough)) \
            .with_outputs(FAILURES, main="rows")
        if self._write:
            from apache_beam.ml.transforms.base import MLTransform

            transformed = fed.rows | "MLTransform" >> MLTransform(
                write_artifact_location=self._write,
                transforms=[s.build() for s in self._steps])
            self._write_manifest()
        else:
            # What MLTransform's read mode runs, without loading its jsonpickle file.
            transformed = fed.rows | "ApplyArtifacts" >> handlers.TFTProcessHandler(
                artifact_location=posixpath.join(self._read, self._tft_dir),
                artifact_mode="consume")
        declared = dict(transformed.element_type._fields)
        columns = [(name, _beam_type(name, t, name in plan.scalars))
                   for name, t in declared.items()]
        strings = frozenset(n for n, t in declared.items()
                            if (typing.get_args(t) or (None,))[0] is bytes)
        # beam.Row, not a NamedTuple made here: rows are pickled downstream (RunInference's
        # batches), and a class made at run time cannot be.
        typed = [(p, fields[p]) for p in self._passthrough] + columns
        row_type = RowTypeConstraint.from_fields(typed)
        out = transformed | "ToRows" >> beam.ParDo(
            _ToRows([n for n, _ in typed], plan.scalars, strings)).with_outputs(
                FAILURES, main=PREPARED)
        prepared = out[PREPARED]
        prepared.element_type = row_type
        failures = ((fed[FAILURES], out[FAILURES])
                    | "Failures" >> beam.Flatten().with_output_types(Failure))
        return {PREPARED: prepared, FAILURES: failures}
