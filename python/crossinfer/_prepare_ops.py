"""The MLTransform operations ``Prepare`` names, with their plain-value arguments.

Each entry says what kind of values the operation takes and gives, and whether a scalar input
column stays a scalar (one value in, one value out), so the output type is known before the
pipeline runs. Beam's embedding operations (Hugging Face, TensorFlow Hub, Vertex AI, OpenAI)
download models or call a service at run time and are not offered.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from collections.abc import Mapping
from typing import Any, Callable, Optional

import numpy as np

from crossinfer._errors import ConfigurationError
from crossinfer._schemas import is_array_type

NUMBER, STRING, IDS = "number", "string", "integer ids"


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise TypeError("true or false")
    return v


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError("an integer")
    return v


def _positive(v: Any) -> int:
    if _int(v) < 1:
        raise TypeError("an integer of at least 1")
    return v


def _float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise TypeError("a finite number")
    return float(v)


def _str(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise TypeError("a non-empty string")
    return v


def _boundaries(v: Any) -> list[float]:
    if not isinstance(v, (list, tuple)) or not v:
        raise TypeError("a non-empty list of increasing numbers")
    out = [_float(x) for x in v]
    if any(b <= a for a, b in zip(out, out[1:])):
        raise TypeError("a non-empty list of increasing numbers")
    return out


def _pair(v: Any) -> tuple[int, int]:
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise TypeError("a list of two integers")
    return (_int(v[0]), _int(v[1]))


@dataclasses.dataclass(frozen=True)
class Operation:
    """One MLTransform operation: its input kind, output kind and arguments."""

    takes: str
    gives: str
    args: Mapping[str, Callable[[Any], Any]]
    # A scalar input column stays a scalar, given these arguments.
    keeps_scalars: Callable[[Mapping[str, Any]], bool] = lambda args: True


_SCALE = {"elementwise": _bool}
_TEXT = {"split_string_by_delimiter": _str, "ngram_range": _pair, "ngrams_separator": _str}

OPERATIONS: dict[str, Operation] = {
    "ScaleTo01": Operation(NUMBER, NUMBER, _SCALE),
    "ScaleToZScore": Operation(NUMBER, NUMBER, _SCALE),
    "ScaleToGaussian": Operation(NUMBER, NUMBER, _SCALE),
    "ScaleByMinMax": Operation(NUMBER, NUMBER, {"min_value": _float, "max_value": _float}),
    "Bucketize": Operation(NUMBER, IDS, {"num_buckets": _positive, "epsilon": _float,
                                         "elementwise": _bool}),
    "ApplyBuckets": Operation(NUMBER, IDS, {"bucket_boundaries": _boundaries}),
    "ApplyBucketsWithInterpolation": Operation(NUMBER, NUMBER,
                                               {"bucket_boundaries": _boundaries}),
    "ComputeAndApplyVocabulary": Operation(
        STRING, IDS, {"split_string_by_delimiter": _str, "default_value": _int,
                      "top_k": _positive, "frequency_threshold": _int,
                      "num_oov_buckets": _int, "vocab_filename": _str},
        keeps_scalars=lambda a: "split_string_by_delimiter" not in a),
    "HashStrings": Operation(STRING, IDS, {"hash_buckets": _positive, "key": _pair}),
    "NGrams": Operation(STRING, STRING, _TEXT, keeps_scalars=lambda a: False),
    "BagOfWords": Operation(STRING, STRING, {**_TEXT, "compute_word_count": _bool,
                                             "key_vocab_filename": _str},
                            keeps_scalars=lambda a: False),
    "DeduplicateTensorPerRow": Operation(STRING, STRING, {}, keeps_scalars=lambda a: False),
    # Adds <column>_vocab_index and <column>_tfidf_weight; the column itself is kept.
    "TFIDF": Operation(IDS, IDS, {"vocab_size": _positive, "smooth": _bool},
                       keeps_scalars=lambda a: False),
}


@dataclasses.dataclass(frozen=True)
class Step:
    """One checked entry of ``operations``."""

    name: str
    columns: tuple[str, ...]
    args: dict[str, Any]

    def build(self) -> Any:
        """The Beam operation (``apache_beam.ml.transforms.tft``); imports tf.Transform."""
        from apache_beam.ml.transforms import tft

        return getattr(tft, self.name)(columns=list(self.columns), **self.args)

    def plain(self) -> dict[str, Any]:
        return {"operation": self.name, "columns": list(self.columns), **{
            k: list(v) if isinstance(v, tuple) else v for k, v in self.args.items()}}


def parse(operations: Any, argument: str = "operations") -> list[Step]:
    """``operations`` (a list of dicts of plain values) -> checked steps."""
    example = ('[{"operation": "ScaleTo01", "columns": ["x"]}, '
               '{"operation": "ComputeAndApplyVocabulary", "columns": ["color"]}]')
    if isinstance(operations, str):  # the Java library sends the list as JSON text
        try:
            operations = json.loads(operations)
        except ValueError as e:
            raise ConfigurationError(f"{argument} is not valid JSON ({e}); give a list such "
                                     f"as {example}") from None
    if not isinstance(operations, (list, tuple)) or not operations:
        raise ConfigurationError(
            f"{argument} must be a non-empty list of operations, e.g. {example}")
    steps = []
    for i, entry in enumerate(operations):
        where = f"{argument}[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigurationError(f"{where} must be a dict such as {example[1:42]}")
        name = entry.get("operation")
        op = OPERATIONS.get(name) if isinstance(name, str) else None
        if op is None:
            raise ConfigurationError(
                f"{where}: unknown operation {name!r}; use one of {', '.join(OPERATIONS)}")
        columns = entry.get("columns")
        if (not isinstance(columns, (list, tuple)) or not columns
                or not all(isinstance(c, str) and c for c in columns)
                or len(set(columns)) != len(columns)):
            raise ConfigurationError(
                f"{where} ({name}): columns must be a non-empty list of distinct field names")
        args = {}
        for key, value in entry.items():
            if key in ("operation", "columns"):
                continue
            check = op.args.get(key)
            if check is None:
                known = ", ".join(op.args) or "none besides columns"
                raise ConfigurationError(
                    f"{where} ({name}): unknown argument {key!r}; its arguments are {known}")
            try:
                args[key] = check(value)
            except TypeError as e:
                raise ConfigurationError(
                    f"{where} ({name}): {key}={value!r} must be {e}") from None
        if name == "ScaleByMinMax" and args.get("max_value", 1.0) <= args.get("min_value", 0.0):
            raise ConfigurationError(
                f"{where} (ScaleByMinMax): max_value must be greater than min_value")
        steps.append(Step(name, tuple(columns), args))
    return steps


def kind_of(field_type: Any) -> tuple[Optional[str], bool]:
    """(NUMBER/STRING/None, is a list) of a Beam field type."""
    t = field_type
    args = [a for a in typing.get_args(t) if a is not type(None)]
    if typing.get_origin(t) is typing.Union and len(args) == 1:
        t = args[0]
    listed = bool(is_array_type(t))
    if listed:
        inner = typing.get_args(t)
        t = inner[0] if inner else Any
    if isinstance(t, type) and issubclass(t, (str, bytes)):
        return STRING, listed
    if isinstance(t, type) and issubclass(t, (int, float, np.number)) and t is not bool:
        return NUMBER, listed
    return None, listed
