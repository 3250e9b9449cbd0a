"""Turns one input row into one model input, or raises InputError saying why it cannot."""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Sequence
from typing import Any, Callable, Optional

import numpy as np

from crossinfer._errors import InputError


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What one model accepts, found by loading it once at construction."""

    width: Optional[int] = None  # fixed number of values per row; None: any length
    pad: bool = False  # rows of different lengths are zero-padded into one batch
    dtype: Optional[str] = None  # "float32", "float64" or "int64" the model wants; None: keep
    describe: str = ""  # for messages: where the width comes from


def _first_bad(value: Sequence[Any]) -> str:
    for i, v in enumerate(value):
        if v is None:
            return f"null at position {i}"
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            return f"{type(v).__name__} {v!r} at position {i}"
    return "values of mixed types"


def to_array(value: Any, name: str) -> np.ndarray:
    """A numeric array: integers stay int64 (token ids), floating values become float32."""
    if value is None:
        raise InputError(f"{name} is null; the model needs an array of numbers")
    arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    kind = arr.dtype.kind
    if kind in "iu":
        arr = arr.astype(np.int64, copy=False)
    elif kind in "fb":
        arr = arr.astype(np.float32, copy=False)
    else:
        raise InputError(f"{name} holds a non-numeric value ({_first_bad(list(value))}); "
                         "the model needs numbers")
    if arr.ndim == 0:
        raise InputError(f"{name} is a single number, not an array; use feature_fields "
                         "for scalar fields")
    return arr


def conform(arr: np.ndarray, spec: InputSpec, name: str) -> np.ndarray:
    """Check the length against the model and cast to the dtype it takes."""
    if arr.ndim == 1 and arr.shape[0] == 0:
        raise InputError(f"{name} is empty; the model needs at least one value")
    if spec.width is not None and arr.ndim >= 1 and arr.shape[0] != spec.width:
        raise InputError(
            f"{name} has {arr.shape[0]} values but the model takes exactly {spec.width}"
            f"{' (' + spec.describe + ')' if spec.describe else ''}; fix the input rows, "
            "they are never padded or cut for a fixed-width model")
    if spec.dtype is not None and arr.dtype != spec.dtype:
        if spec.dtype == "int64" and arr.dtype.kind == "f":
            if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
                raise InputError(f"{name} holds non-integer values but the model takes integer "
                                 "ids (int64)")
        arr = arr.astype(spec.dtype)
    return arr


class Extractor:
    """row -> model input, from feature_field, feature_fields or a preprocess function."""

    def __init__(self, *, feature_field: Optional[str] = None,
                 feature_fields: Optional[Sequence[str]] = None,
                 preprocess: Optional[Callable[[Any], Any]] = None) -> None:
        self._field = feature_field
        self._fields = tuple(feature_fields) if feature_fields else None
        self._fn = preprocess

    def __call__(self, row: Any, spec: InputSpec) -> Any:
        if self._field is not None:
            name = f"field {self._field!r}"
            arr = to_array(getattr(row, self._field), name)
        elif self._fields is not None:
            arr = np.empty(len(self._fields), dtype=np.float32)
            for i, field in enumerate(self._fields):
                v = getattr(row, field)
                if v is None:
                    raise InputError(f"field {field!r} is null; feature_fields must all be numbers")
                if isinstance(v, (bool, np.bool_)) or not isinstance(v, (numbers.Real, np.number)):
                    raise InputError(f"field {field!r} is {type(v).__name__} {v!r}, not a number")
                arr[i] = v
            name = "feature_fields"
        else:
            x = self._fn(row)
            if not isinstance(x, (np.ndarray, list, tuple)):
                return x  # e.g. a dict or tensor for a custom handler: its business
            name = "the preprocess output"
            arr = to_array(x, name)
        return conform(arr, spec, name)
