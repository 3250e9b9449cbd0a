"""What a model takes and returns, as plain data.

A signature is found once per model at construction (or expansion) by the model's framework
module, and from then on it is all the transform knows about the model: the workers get it as
plain data and never inspect the model object again. Being plain data, it can also be found in
another process (the expansion service opens model files in an isolated child) and sent back.

Each fact comes, in this order, from an explicit argument, from the model's declared metadata,
or from a probe on a tiny synthetic batch; ``sources`` says which, for messages and logs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Optional

from crossinfer._arguments import INPUT_DTYPES, MAX_RANK, OUTPUT_KINDS
from crossinfer._errors import ModelLoadError
from crossinfer._features import InputSpec

_MAX_CLASSES = 1_000_000
_MAX_TEXT = 2000
MAX_SAMPLE_VALUES = 256  # values of one output kept from the probe, for checking postprocess
_SAMPLE_DTYPES = ("float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8",
                  "bool", "str")


@dataclasses.dataclass(frozen=True)
class Signature:
    """One model's input and output, as found at construction."""

    input_name: Optional[str] = None  # the model's name for its input, where it has one
    input_dtype: Optional[str] = None  # what the model takes; None: keep the row's dtype
    input_shape: Optional[tuple[int, ...]] = None  # one row, -1: a sequence axis; None: any
    pad_value: Optional[float] = None  # what the sequence axis is padded with
    allow_nan: bool = True  # False: rows with NaN/inf fail before the model call
    output: Optional[str] = None  # probabilities | logits | value | named; None: not known
    num_classes: Optional[int] = None  # output columns of a classifier
    labels: Optional[tuple[int, ...]] = None  # label of each output column, if not 0..n-1
    label_names: Optional[tuple[str, ...]] = None  # class name of each output column
    output_names: Optional[tuple[str, ...]] = None  # output="named": the model's names
    output_index: Optional[int] = None  # the model returns several outputs: the one used
    zipmap_keys: Optional[tuple[str, ...]] = None  # that output is a map per row: its keys
    exact_lengths: bool = False  # padding changes the output: group rows by exact length
    output_shape: Optional[tuple[int, ...]] = None  # one row's output (not named), probed
    # One probe row's output as plain data (see ``sample``), to check the postprocess with.
    sample: Optional[dict[str, Any]] = None
    sources: tuple[tuple[str, str], ...] = ()  # (fact, where it came from)

    def source(self, fact: str) -> str:
        return dict(self.sources).get(fact, "")

    def input_spec(self) -> InputSpec:
        return InputSpec(shape=self.input_shape, dtype=self.input_dtype,
                         pad_value=self.pad_value, allow_nan=self.allow_nan,
                         describe=self.source("input_shape"), exact_lengths=self.exact_lengths)

    def explain(self) -> str:
        """One line per fact, for logs and messages."""
        return "; ".join(f"{fact}: {where}" for fact, where in self.sources)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able plain data."""
        d = dataclasses.asdict(self)
        for name in _TUPLES:
            d[name] = None if d[name] is None else list(d[name])
        d["sources"] = [list(s) for s in self.sources]
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Signature":
        """The inverse of ``to_dict``; checks every value, since it may come from another process."""
        if not isinstance(data, Mapping) or set(data) - {f.name for f in dataclasses.fields(cls)}:
            raise ModelLoadError("the model inspection returned an unexpected answer")
        g = data.get

        def opt(value: Any, ok: Any) -> bool:
            return value is None or ok(value)

        def text(v: Any) -> bool:
            return isinstance(v, str) and len(v) <= _MAX_TEXT

        def int_list(v: Any, each: Any, longest: int) -> bool:
            return isinstance(v, list) and len(v) <= longest and all(
                type(x) is int and each(x) for x in v)

        ok = (
            opt(g("input_name"), text)
            and opt(g("input_dtype"), lambda v: v in INPUT_DTYPES)
            and opt(g("input_shape"), lambda v: 1 <= len(v) if int_list(
                v, lambda d: d >= 1 or d == -1, MAX_RANK) else False)
            and opt(g("pad_value"), lambda v: type(v) in (int, float) and math.isfinite(v))
            and type(g("allow_nan", True)) is bool
            and opt(g("output"), lambda v: v in OUTPUT_KINDS)
            and opt(g("num_classes"), lambda v: type(v) is int and 1 <= v <= _MAX_CLASSES)
            and opt(g("labels"), lambda v: int_list(v, lambda x: True, _MAX_CLASSES))
            and opt(g("output_names"), lambda v: isinstance(v, list) and len(v) <= 1000
                    and all(text(x) for x in v))
            and opt(g("label_names"), lambda v: isinstance(v, list) and len(v) <= _MAX_CLASSES
                    and all(text(x) for x in v))
            and opt(g("output_index"), lambda v: type(v) is int and 0 <= v <= 1000)
            and opt(g("zipmap_keys"), lambda v: isinstance(v, list) and len(v) <= _MAX_CLASSES
                    and all(text(x) for x in v))
            and type(g("exact_lengths", False)) is bool
            and opt(g("output_shape"), lambda v: int_list(v, lambda d: d >= 0, MAX_RANK))
            and opt(g("sample"), _sample_ok)
            and isinstance(g("sources", []), list)
            and all(isinstance(s, list) and len(s) == 2 and all(text(x) for x in s)
                    for s in g("sources", []))
        )
        if not ok:
            raise ModelLoadError("the model inspection returned an unexpected answer")
        tuples = {name: None if g(name) is None else tuple(g(name)) for name in _TUPLES}
        return cls(**{**data, **tuples,
                      "sources": tuple(tuple(s) for s in g("sources", []))})


_TUPLES = ("input_shape", "labels", "label_names", "output_names", "output_shape",
           "zipmap_keys")


def sample(output: Any) -> Optional[dict[str, Any]]:
    """One row's model output as plain data: ``{"dtype", "shape", "values"}`` for an array,
    ``{"named": {name: array}}`` for a dict of them; None when too large to keep."""
    import numpy as np

    if isinstance(output, Mapping):
        arrays = {str(k): sample(v) for k, v in list(output.items())[:64]}
        if len(output) > 64 or any(v is None for v in arrays.values()) or sum(
                len(v["values"]) for v in arrays.values()) > MAX_SAMPLE_VALUES:
            return None  # kept small: it crosses from the inspecting process in one line
        return {"named": arrays}
    arr = np.asarray(output)
    kind = arr.dtype.kind
    dtype = "str" if kind in "US" or (kind == "O" and all(
        isinstance(x, str) for x in arr.ravel().tolist())) else arr.dtype.name
    if dtype not in _SAMPLE_DTYPES or arr.size > MAX_SAMPLE_VALUES or arr.ndim > MAX_RANK:
        return None
    values = [str(x) for x in arr.ravel().tolist()] if dtype == "str" else arr.ravel().tolist()
    if dtype == "str" and any(len(v) > _MAX_TEXT for v in values):
        return None
    return {"dtype": dtype, "shape": list(arr.shape), "values": values}


def unsample(data: Mapping[str, Any]) -> Any:
    """The inverse of ``sample``: numpy arrays (or a dict of them) as the model returned."""
    import numpy as np

    if "named" in data:
        return {k: unsample(v) for k, v in data["named"].items()}
    dtype = object if data["dtype"] == "str" else data["dtype"]
    arr = np.asarray(data["values"], dtype=dtype).reshape(data["shape"])
    return arr if arr.ndim else arr[()]


def _sample_ok(v: Any, depth: int = 0) -> bool:
    if not isinstance(v, Mapping) or depth > 1:
        return False
    if set(v) == {"named"}:
        named = v["named"]
        return isinstance(named, Mapping) and len(named) <= 64 and all(
            isinstance(k, str) and len(k) <= _MAX_TEXT and _sample_ok(x, depth + 1)
            for k, x in named.items())
    if set(v) != {"dtype", "shape", "values"} or v["dtype"] not in _SAMPLE_DTYPES:
        return False
    shape, values = v["shape"], v["values"]
    if not (isinstance(shape, list) and len(shape) <= MAX_RANK and all(
            type(d) is int and 0 <= d <= MAX_SAMPLE_VALUES for d in shape)):
        return False
    if not isinstance(values, list) or len(values) > MAX_SAMPLE_VALUES or \
            len(values) != math.prod(shape):
        return False
    if v["dtype"] == "str":
        return all(isinstance(x, str) and len(x) <= _MAX_TEXT for x in values)
    return all(type(x) in (int, float, bool) for x in values)
