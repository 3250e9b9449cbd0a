"""blocks=True: each input element holds many rows, column by column.

A block's ``feature_field`` holds its rows' features: a 2-D array, a list of per-row arrays,
(for a fixed-width model) one flat array of n * width numbers, row after row, or a packed
row (what the Java library sends): ``values`` (bytes: every row's numbers, little-endian,
row after row), ``lengths`` (bytes: one little-endian int32 per row, -1 for a null row) and
``dtype`` (``"float64"``, ``"float32"``, ``"int64"`` or ``"int32"``); with ``feature_fields``
each named field holds one column. Every passthrough field holds one value
per row. The whole block is read with one numpy conversion when it is plain numbers; a block
that is not falls back to reading row by row, so a bad row fails alone, with the same message
as in row mode. Predictions come out as one block per input block (the rows that succeeded),
failures as one row each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import apache_beam as beam
import numpy as np

from crossinfer._errors import InputError
from crossinfer._features import Extractor, InputSpec, stacked


class Block:
    """The rows of one block element: ``block[i]`` is row i as a dict (for failure reports)."""

    def __init__(self, n: int, columns: dict[str, Any]) -> None:
        self.n = n
        self.columns = columns  # field -> one value per row

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {name: values[i] for name, values in self.columns.items()}


class _View:
    """Row i of a block, read by attribute like an input row (the row-by-row fallback)."""

    __slots__ = ("_columns", "_i")

    def __init__(self, columns: dict[str, Any], i: int) -> None:
        self._columns = columns
        self._i = i

    def __getattr__(self, name: str) -> Any:
        try:
            return self._columns[name][self._i]
        except KeyError:
            raise AttributeError(name) from None


# Packed feature columns: numbers as the row path reads them (Python floats and ints).
_PACKED = {"float64": ("<f8", np.float64), "float32": ("<f4", np.float64),
           "int64": ("<i8", np.int64), "int32": ("<i4", np.int64)}


def is_packed(value: Any) -> bool:
    """A packed feature column: a row with ``values``, ``lengths`` and ``dtype``."""
    return all(hasattr(value, name) for name in ("values", "lengths", "dtype")) and isinstance(
        getattr(value, "values"), (bytes, bytearray, memoryview))


def unpack(packed: Any, name: str) -> Any:
    """A packed column -> a 2-D array when every row has the same length, else a list of
    per-row arrays (None for a null row), as the row path would read the rows."""
    dtype = _PACKED.get(packed.dtype)
    if dtype is None:
        raise InputError(f"block field {name!r} is packed as {packed.dtype!r}; a packed "
                         f"column holds one of {sorted(_PACKED)}")
    wire, wide = dtype
    size = np.dtype(wire).itemsize
    if len(packed.values) % size or len(packed.lengths) % 4:
        raise InputError(f"block field {name!r} is a packed column of {len(packed.values)} "
                         f"value bytes and {len(packed.lengths)} length bytes, not whole "
                         f"{packed.dtype} values and int32 lengths; the block cannot be split")
    values = np.frombuffer(packed.values, dtype=wire).astype(wide)  # a writable copy
    lengths = np.frombuffer(packed.lengths, dtype="<i4")
    if (lengths.size and lengths.min() < -1) or int(np.maximum(lengths, 0).sum()) != values.size:
        raise InputError(f"block field {name!r}: its row lengths do not add up to the "
                         f"{values.size} values it holds; the block cannot be split")
    if lengths.size and lengths[0] > 0 and (lengths == lengths[0]).all():
        return values.reshape(lengths.size, int(lengths[0]))
    parts = np.split(values, np.cumsum(np.maximum(lengths, 0))[:-1]) if lengths.size else []
    return [None if n < 0 else part for part, n in zip(parts, lengths.tolist())]


def _length(value: Any, name: str) -> int:
    if value is None or isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise InputError(f"block field {name!r} is {type(value).__name__}, not one value per "
                         "row; with blocks=True every input field holds a list")
    return len(value)


class Reader:
    """Block element -> (Block, indices of rows read, their model inputs, (index, error) rest)."""

    def __init__(self, extract: Extractor, feature_field: Optional[str],
                 feature_fields: Optional[Sequence[str]], passthrough: Sequence[str]) -> None:
        self._extract = extract
        self._field = feature_field
        self._fields = tuple(feature_fields or ())
        self._passthrough = tuple(passthrough)

    def __call__(self, element: Any, spec: InputSpec
                 ) -> tuple[Block, list[int], Any, list[tuple[int, str]]]:
        columns = {name: getattr(element, name) for name in self._passthrough}
        fast: Optional[np.ndarray] = None
        if self._field is not None:
            value = getattr(element, self._field)
            if is_packed(value):
                value = unpack(value, self._field)
            arr = _numeric(value)
            if arr is not None and arr.ndim == 1 and spec.width and not spec.pad:
                if arr.size % spec.width:
                    raise InputError(
                        f"field {self._field!r} holds {arr.size} values, not a whole number of "
                        f"rows of {spec.width} (the model's width); the block cannot be split")
                arr = arr.reshape(-1, spec.width)
            columns[self._field] = arr if arr is not None and arr.ndim == 2 else value
            if arr is not None and arr.ndim == 2:
                fast = stacked(arr, spec)
        else:
            for name in self._fields:
                columns[name] = getattr(element, name)
            cols = [_numeric(columns[name]) for name in self._fields]
            if all(c is not None and c.ndim == 1 and c.dtype.kind in "iuf" for c in cols):
                if len({len(c) for c in cols}) == 1:
                    fast = stacked(np.stack(cols, axis=1), spec)
        lengths = {name: _length(values, name) for name, values in columns.items()}
        if len(set(lengths.values())) > 1:
            raise InputError(f"the block's fields disagree on its number of rows: {lengths}")
        n = next(iter(lengths.values()), 0)
        block = Block(n, columns)
        if fast is not None:
            return block, list(range(n)), fast, []
        good, xs, bad = self._extract.batch([_View(columns, i) for i in range(n)], spec)
        return block, good, xs, bad


def _numeric(value: Any) -> Optional[np.ndarray]:
    if value is None:
        return None
    try:
        arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    except (ValueError, TypeError):
        return None
    return arr if arr.dtype.kind in "iufb" else None


def prediction(outcomes: Any, columns: dict[str, list], errors: dict[int, str],
               passthrough: Sequence[str], make: Any = beam.Row
               ) -> tuple[Optional[Any], list[tuple[int, str]]]:
    """One prediction block for the scored rows without errors; (row index, error) for the rest."""
    block: Block = outcomes.rows
    scored = outcomes.scored
    failed = [(scored[j], error) for j, error in errors.items()]
    keep = [j for j in range(len(scored)) if j not in errors] if errors else None
    rows = scored if keep is None else [scored[j] for j in keep]
    if not rows:
        return None, failed
    whole = keep is None and rows == list(range(block.n))  # already in the block's order
    fields: dict[str, Any] = {}
    for name in passthrough:
        values = block.columns[name]
        if not whole:
            values = [values[i] for i in rows]
        fields[name] = values.tolist() if isinstance(values, np.ndarray) else list(values)
    for name, values in columns.items():
        fields[name] = values if keep is None else [values[j] for j in keep]
    fields["model_id"] = outcomes.model_id
    return make(**fields), failed
