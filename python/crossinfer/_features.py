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
    """What one model accepts, from its signature (found once at construction)."""

    shape: Optional[tuple[int, ...]] = None  # one row's shape, -1: a sequence axis; None: any
    dtype: Optional[str] = None  # the dtype the model takes; None: keep the row's
    pad_value: Optional[float] = None  # sequences are padded with this
    allow_nan: bool = True  # False: a row with NaN/inf is a failure before the model call
    describe: str = ""  # for messages: where the shape comes from
    exact_lengths: bool = False  # padding changes the output: only equal lengths share a call

    @property
    def width(self) -> Optional[int]:
        """A fixed number of values per row (a 1-D input), else None."""
        if self.shape is not None and len(self.shape) == 1 and self.shape[0] != -1:
            return self.shape[0]
        return None

    @property
    def pad(self) -> bool:
        """Rows of different lengths are padded into one batch."""
        return self.shape is not None and -1 in self.shape

    @property
    def seq_axis(self) -> Optional[int]:
        return self.shape.index(-1) if self.pad else None

    def fits(self, row_shape: tuple[int, ...]) -> bool:
        return self.shape is None or (len(row_shape) == len(self.shape) and all(
            d == -1 or d == s for d, s in zip(self.shape, row_shape)))


def _first_bad(value: Any) -> str:
    try:
        items = list(value)
    except TypeError:
        return f"{type(value).__name__} {value!r}"
    for i, v in enumerate(items):
        if v is None:
            return f"null at position {i}"
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            return f"{type(v).__name__} {v!r} at position {i}"
    return "values of mixed types"


def to_array(value: Any, name: str) -> np.ndarray:
    """A numeric array in the row's own dtype (int64 for integers, float64 for floats)."""
    if value is None:
        raise InputError(f"{name} is null; the model needs an array of numbers")
    try:
        arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    except (ValueError, TypeError):
        raise InputError(f"{name} is ragged (nested lists of different lengths); the model "
                         "needs a rectangular array") from None
    kind = arr.dtype.kind
    if kind in "iu":
        arr = arr.astype(np.int64, copy=False)
    elif kind == "U" and all(isinstance(v, str) for v in np.asarray(value, dtype=object).flat):
        pass  # strings: conform checks that the model takes them (input_dtype='string')
    elif kind not in "fb":
        raise InputError(f"{name} holds a non-numeric value ({_first_bad(value)}); "
                         "the model needs numbers")
    if arr.ndim == 0:
        raise InputError(f"{name} is a single number, not an array; use feature_fields "
                         "for scalar fields")
    return arr


def _shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join("n" if d == -1 else str(d) for d in shape) + "]"


def conform(arr: np.ndarray, spec: InputSpec, name: str) -> np.ndarray:
    """Check the shape and values against the model and cast to the dtype it takes."""
    if arr.size == 0:
        raise InputError(f"{name} is empty; the model needs at least one value")
    if spec.shape is not None and not spec.fits(arr.shape):
        where = f" ({spec.describe})" if spec.describe else ""
        if spec.width is not None and arr.ndim == 1:
            raise InputError(
                f"{name} has {arr.shape[0]} values but the model takes exactly {spec.width}"
                f"{where}; fix the input rows, they are never padded or cut for a fixed-width "
                "model")
        raise InputError(
            f"{name} has shape {list(arr.shape)} but the model takes one row of shape "
            f"{_shape_text(spec.shape)}{where}; rows are never flattened, padded or cut to fit")
    if (arr.dtype.kind == "U") != (spec.dtype == "string"):
        if spec.dtype == "string":
            raise InputError(f"{name} holds numbers but the model takes strings")
        raise InputError(f"{name} holds a non-numeric value ({_first_bad(arr.tolist())}); "
                         "the model needs numbers (or input_dtype='string' for a model that "
                         "takes strings)")
    if spec.dtype == "string":
        return arr
    if arr.dtype.kind == "b" and spec.dtype != "bool":
        raise InputError(f"{name} holds booleans but the model takes {spec.dtype or 'numbers'}; "
                         "send numbers, or set input_dtype='bool'")
    if not spec.allow_nan and arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InputError(f"{name} holds NaN or infinite values, which the model does not "
                         "accept")
    if spec.dtype is not None and arr.dtype != spec.dtype:
        if spec.dtype in ("int64", "int32") and arr.dtype.kind == "f":
            if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
                raise InputError(f"{name} holds non-integer values but the model takes integer "
                                 f"ids ({spec.dtype})")
        if spec.dtype == "bool" and arr.dtype.kind != "b":
            raise InputError(f"{name} holds numbers but the model takes booleans")
        arr = arr.astype(spec.dtype)
    return arr


def screen(arr: np.ndarray, spec: InputSpec) -> Optional[np.ndarray]:
    """Vectorised checks of a stacked batch (n, *row shape): a boolean mask of the rows that
    pass every check ``conform`` makes, or None when the batch as a whole cannot be read
    this way (wrong shape for every row, or a dtype that needs a closer look)."""
    kind = arr.dtype.kind
    if kind not in "iufb" or arr.ndim < 2 or 0 in arr.shape[1:]:
        return None
    if not spec.fits(arr.shape[1:]):
        return None
    if (kind == "b") != (spec.dtype == "bool"):
        return None
    ok = np.ones(len(arr), dtype=bool)
    axes = tuple(range(1, arr.ndim))
    if kind == "f":
        if not spec.allow_nan:
            ok &= np.isfinite(arr).all(axis=axes)
        if spec.dtype in ("int64", "int32"):
            with np.errstate(invalid="ignore"):
                ok &= (np.isfinite(arr) & (arr == np.round(arr))).all(axis=axes)
    return ok


def stacked(values: Any, spec: InputSpec) -> Optional[np.ndarray]:
    """All rows' arrays in one numpy conversion, or None when some row needs a closer look.

    Gives exactly what ``to_array`` + ``conform`` give row by row, for the common case: every
    row an array of plain numbers of the same, allowed shape.
    """
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError):  # ragged, or values numpy cannot hold
        return None
    ok = screen(arr, spec)
    if ok is None or not ok.all():
        return None
    return _cast(arr, spec)


def _cast(arr: np.ndarray, spec: InputSpec) -> np.ndarray:
    dtype = spec.dtype or ("int64" if arr.dtype.kind in "iu" else arr.dtype)
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
            arr = np.empty(len(self._fields), dtype=np.float64)
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
                values = [getattr(row, self._field) for row in rows]
            except Exception:  # pylint: disable=broad-except
                values = None  # e.g. a row without the field: found row by row below
            if values is not None:
                screened = self._screen(values, spec)
                if screened is not None:
                    good, arr, rest = screened
                    if not rest:
                        return good, arr, []
                    # The rows that failed screening get their exact error row by row.
                    bad = [(i, describe(e)) for i in rest
                           for e in [self._error(rows[i], spec)] if e is not None]
                    late = [i for i in rest if i not in dict(bad)]
                    if not late:
                        return good, arr, bad
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

    def _error(self, row: Any, spec: InputSpec) -> Optional[Exception]:
        try:
            self(row, spec)
        except Exception as e:  # pylint: disable=broad-except
            return e
        return None

    @staticmethod
    def _screen(values: list[Any], spec: InputSpec
                ) -> Optional[tuple[list[int], np.ndarray, list[int]]]:
        """(rows that pass, their stacked inputs, rows that do not), with vectorised checks;
        None when the batch is not plain numbers of the model's shape (then: row by row).

        A few bad rows (nulls, wrong length, NaN for a model that rejects it) do not send
        the whole batch row by row, nor make the model call fail and the batch re-run.
        """
        try:
            arr = np.asarray(values)
            if arr.dtype == object:
                raise ValueError
        except (ValueError, TypeError):
            width = spec.width
            if width is None:
                return None  # ragged rows of a sequence model: row by row
            keep = [i for i, v in enumerate(values)
                    if isinstance(v, (list, tuple, np.ndarray)) and len(v) == width]
            if not keep:
                return None
            try:
                arr = np.asarray([values[i] for i in keep])
            except (ValueError, TypeError):
                return None
            ok = screen(arr, spec)
            if ok is None:
                return None
            kept = set(keep)
            rest = [i for i in range(len(values)) if i not in kept]
        else:
            ok = screen(arr, spec)
            if ok is None:
                return None
            keep, rest = list(range(len(values))), []
        if not ok.all():
            rest = sorted(rest + [keep[j] for j in np.flatnonzero(~ok).tolist()])
            arr = arr[ok]
            keep = [keep[j] for j in np.flatnonzero(ok).tolist()]
        if not keep:
            return None
        return keep, _cast(arr, spec), rest
