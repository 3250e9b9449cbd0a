"""blocks=True: each input element holds many rows, column by column.

A block's ``feature_field`` holds its rows' features: a 2-D array, a list of per-row arrays,
or (for a fixed-width model) one flat array of n * width numbers, row after row; with
``feature_fields`` each named field holds one column. Every passthrough field holds one value
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
