"""Does Prism hand a ParDo's elements an empty windowed side input before that window's side
input is out? A minimal pipeline without crossinfer (``python -m bench.prism_side_input``).

Rows in fixed windows, held by a GroupByKey until their window closes (as crossinfer held them
before it grouped a marker of the window's model with them), then read with a side input of
the same windows: one element per window, computed from the rows and made slow (``--slow`` s,
as checking a new model file in an isolated child is). Each row records whether its window's
side input was there. A runner that holds main-input elements until their window's side input
is ready prints "0 rows saw an empty side input".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.periodicsequence import PeriodicImpulse

from bench.machine import load


class _Record(beam.DoFn):
    def __init__(self, path: str) -> None:
        self._path = path

    def process(self, row: int, side: Any):
        with open(self._path, "a", encoding="utf-8") as f:
            f.write(json.dumps([row, side is None]) + "\n")


def _slow(n: int, seconds: float) -> int:
    time.sleep(seconds)
    return n


def main(argv: Sequence[str] = ()) -> int:
    from crossinfer import _prism

    ap = argparse.ArgumentParser(prog="python -m bench.prism_side_input")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--slow", type=float, default=1.0)
    args = ap.parse_args(list(argv) or None)
    out = tempfile.mktemp(prefix="prism-side-input-", suffix=".jsonl")
    p = beam.Pipeline(options=PipelineOptions(
        runner="PrismRunner", prism_location=str(_prism.locate()), streaming=True,
        experiments=["disable_prism_server_singleton"]))
    start = time.time() + 3
    rows = (p | PeriodicImpulse(start_timestamp=start, stop_timestamp=start + args.seconds,
                                fire_interval=0.1)
            | beam.Map(lambda t: round((float(t) - start) * 10))
            | beam.WindowInto(beam.window.FixedWindows(2)))
    side = (rows | beam.CombineGlobally(beam.combiners.CountCombineFn()).without_defaults()
            | beam.Map(_slow, args.slow))
    held = (rows | beam.Map(lambda i: (i % 16, i)) | beam.GroupByKey()
            | beam.FlatMap(lambda kv: kv[1]))
    _ = held | beam.ParDo(_Record(out), beam.pvalue.AsSingleton(side, default_value=None))
    state = p.run().wait_until_finish()
    got = [json.loads(x) for x in open(out, encoding="utf-8")] if os.path.exists(out) else []
    if os.path.exists(out):
        os.remove(out)
    empty = sorted(r for r, none in got if none)
    print(f"{state}: {len(got)} rows, {len(empty)} rows saw an empty side input "
          f"{empty[:20]}{'...' if len(empty) > 20 else ''} (load {load()})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
