"""Turns one input row into one model input, or raises InputError saying why it cannot."""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Sequence
from typing import Any, Callable, Optional

import numpy as np

from crossinfer._errors import InputError, describe


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


def stacked(values: Any, spec: InputSpec) -> Optional[np.ndarray]:
    """All rows' arrays in one numpy conversion, or None when some row needs a closer look.

    Gives exactly what ``to_array`` + ``conform`` give row by row, for the common case: every
    row a list (or array) of plain numbers of the same, allowed length.
    """
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError):  # ragged, or values numpy cannot hold
        return None
    kind = arr.dtype.kind
    if arr.ndim != 2 or arr.shape[1] == 0 or kind not in "iufb":
        return None
    if spec.width is not None and arr.shape[1] != spec.width:
        return None
    if spec.dtype == "int64" and kind in "fb":
        return None  # row by row: a non-integer value is that row's failure
    dtype = spec.dtype or ("int64" if kind in "iu" else "float32")
    return arr.astype(dtype, copy=False)


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

    def batch(self, rows: Sequence[Any], spec: InputSpec
              ) -> tuple[list[int], Any, list[tuple[int, str]]]:
        """The model inputs of a batch of rows.

        Returns (indices of the rows that were read, their inputs, (index, error) of the rest).
        The inputs are one stacked array when a single conversion of the whole batch works
        (every row a numeric array of the same allowed length), else a list of arrays.
        """
        if self._field is not None:
            try:
                stacked_ = stacked([getattr(row, self._field) for row in rows], spec)
            except Exception:  # pylint: disable=broad-except
                stacked_ = None  # e.g. a row without the field: found row by row below
            if stacked_ is not None:
                return list(range(len(rows))), stacked_, []
        good: list[int] = []
        xs: list[Any] = []
        bad: list[tuple[int, str]] = []
        for i, row in enumerate(rows):
            try:
                xs.append(self(row, spec))
                good.append(i)
            except Exception as e:  # pylint: disable=broad-except
                bad.append((i, describe(e)))
        return good, xs, bad
