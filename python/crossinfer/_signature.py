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
    output_names: Optional[tuple[str, ...]] = None  # output="named": the model's names
    sources: tuple[tuple[str, str], ...] = ()  # (fact, where it came from)

    def source(self, fact: str) -> str:
        return dict(self.sources).get(fact, "")

    def input_spec(self) -> InputSpec:
        return InputSpec(shape=self.input_shape, dtype=self.input_dtype,
                         pad_value=self.pad_value, allow_nan=self.allow_nan,
                         describe=self.source("input_shape"))

    def explain(self) -> str:
        """One line per fact, for logs and messages."""
        return "; ".join(f"{fact}: {where}" for fact, where in self.sources)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able plain data."""
        d = dataclasses.asdict(self)
        for name in ("input_shape", "labels", "output_names"):
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
            and isinstance(g("sources", []), list)
            and all(isinstance(s, list) and len(s) == 2 and all(text(x) for x in s)
                    for s in g("sources", []))
        )
        if not ok:
            raise ModelLoadError("the model inspection returned an unexpected answer")
        tuples = {name: None if g(name) is None else tuple(g(name))
                  for name in ("input_shape", "labels", "output_names")}
        return cls(**{**data, **tuples,
                      "sources": tuple(tuple(s) for s in g("sources", []))})
