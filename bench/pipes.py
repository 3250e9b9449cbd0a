"""Pipeline pieces shared by every Beam system: in-pipeline sources, a counting sink, a clock.

Rows are generated inside the pipeline (Impulse -> ParDo) from data the worker process made
before the run, so what is timed is the runner and the transform, not beam.Create pickling a
list. The DirectRunner runs in this process, so the source and the sink share a clock: the
"processing window" runs from the source's first row to the sink's last ``finish_bundle``.
"""

from __future__ import annotations

import time
import typing
from typing import Any, Callable, Iterator, Optional, Sequence

import apache_beam as beam
import numpy as np

from bench import data

# Functional NamedTuples: with postponed annotations Beam would type the fields Any.
FeatureRow = typing.NamedTuple("FeatureRow", [("id", int), ("features", Sequence[float])])
TokenRow = typing.NamedTuple("TokenRow", [("id", int), ("tokens", Sequence[int])])
FeatureBlock = typing.NamedTuple(
    "FeatureBlock", [("id", Sequence[int]), ("features", Sequence[Sequence[float]])])
# Schema'd rows, as Beam means them: coded by the RowCoder (Java rows arrive that way), not
# pickled. Blocks hold numpy arrays, which pickle faster than a RowCoder walks them.
beam.coders.registry.register_coder(FeatureRow, beam.coders.RowCoder)
beam.coders.registry.register_coder(TokenRow, beam.coders.RowCoder)

DATA = data.LOADED  # filled by the worker before the timed runs
CLOCK: dict[str, float] = {}
COUNTS: dict[str, int] = {}


def reset() -> None:
    CLOCK.clear()
    COUNTS.clear()


def _started() -> None:
    CLOCK.setdefault("start", time.perf_counter())


class Source(beam.DoFn):
    """Impulse -> the rows [0, n) of DATA[key] in one of several shapes."""

    def __init__(self, key: str, n: int, shape: str, block: int = 4096) -> None:
        self._key, self._n, self._shape, self._block = key, n, shape, block

    def process(self, _: Any) -> Iterator[Any]:
        _started()
        data = DATA[self._key]
        n, shape = self._n, self._shape
        if shape == "sequences":  # list of int64 arrays
            for i in range(n):
                yield TokenRow(i, data[i].tolist())
            return
        if shape == "sequence_arrays":  # stock Beam: int64 tensors, one per row
            import torch
            for i in range(n):
                yield torch.from_numpy(data[i])
            return
        step = 4096 if shape != "blocks" else self._block
        for start in range(0, n, step):
            block = data[start:min(n, start + step)]
            if shape == "rows":  # schema'd rows, features as a list (as a RowCoder decodes)
                for i, values in enumerate(block.tolist()):
                    yield FeatureRow(start + i, values)
            elif shape == "numpy":  # stock Beam: one float32 array per row
                yield from block
            elif shape == "tensors":
                import torch
                yield from torch.from_numpy(block)
            elif shape == "blocks":  # crossinfer block input: a 2-D array per element
                yield FeatureBlock(np.arange(start, start + len(block)), block)
            else:
                raise ValueError(shape)


class Sink(beam.DoFn):
    """Counts rows (a block counts as its rows) and stamps the end of the window."""

    def __init__(self, name: str, rows_of: Optional[Callable[[Any], int]] = None) -> None:
        self._name = name
        self._rows_of = rows_of

    def start_bundle(self) -> None:
        self._count = 0

    def process(self, element: Any) -> None:
        self._count += 1 if self._rows_of is None else self._rows_of(element)

    def finish_bundle(self) -> None:
        COUNTS[self._name] = COUNTS.get(self._name, 0) + self._count
        CLOCK["end"] = time.perf_counter()


def timed_run(build: Callable[[beam.Pipeline], None]) -> dict[str, float]:
    """Build and run one pipeline; wall seconds and the processing window."""
    reset()
    t0 = time.perf_counter()
    p = beam.Pipeline()
    build(p)
    result = p.run()
    result.wait_until_finish()
    wall = time.perf_counter() - t0
    window = CLOCK.get("end", t0) - CLOCK.get("start", t0)
    return {"wall": wall, "window": window, "counts": dict(COUNTS), "result": result}
