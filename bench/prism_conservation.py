"""Does Prism itself lose rows of a streaming job with a backlog? A minimal pipeline without
crossinfer (``python -m bench.prism_conservation [--runs N] [--cancel]``; see bench/README.md).

PeriodicImpulse rows that start ``--backlog`` seconds in the past (a job that starts late), in
fixed windows, grouped by 16 keys (as crossinfer holds rows until their window closes), each
row written to a file. Without ``--cancel`` the source ends and the job ends by itself: every
row must come out. With ``--cancel`` the job is cancelled ``--after`` seconds after its source
ended, and the script says which closed windows were cut, i.e. what a cancel drops.
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


class _Write(beam.DoFn):
    def __init__(self, path: str) -> None:
        self._path = path

    def process(self, kv: Any, win: Any = beam.DoFn.WindowParam):
        with open(self._path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps([i, float(win.start)]) + "\n" for i in kv[1]))


def run_once(backlog: float, live: float, every: float, window: float, cancel: bool,
             after: float, prism: str) -> str:
    out = tempfile.mktemp(prefix="prism-conservation-", suffix=".jsonl")
    p = beam.Pipeline(options=PipelineOptions(
        runner="PrismRunner", prism_location=prism, streaming=True,
        experiments=["disable_prism_server_singleton"]))
    start = time.time() - backlog
    total = round((backlog + live) / every)
    _ = (p | PeriodicImpulse(start_timestamp=start, stop_timestamp=start + total * every,
                             fire_interval=every)
         | beam.Map(lambda t: round((float(t) - start) / every))
         | beam.WindowInto(beam.window.FixedWindows(window))
         | beam.Map(lambda i: (i % 16, i))
         | beam.GroupByKey()
         | beam.ParDo(_Write(out)))
    result = p.run()
    if cancel:
        time.sleep(max(0.0, start + total * every + after - time.time()))
        result.cancel()
        state = "CANCELLED"
    else:
        state = str(result.wait_until_finish(duration=int((live + 300) * 1000)))
        if state != "DONE":
            result.cancel()
    got = [json.loads(x) for x in open(out, encoding="utf-8")] if os.path.exists(out) else []
    if os.path.exists(out):
        os.remove(out)
    ids = sorted(i for i, _ in got)
    missing = sorted(set(range(total)) - set(ids))
    twice = len(ids) - len(set(ids))
    spans = []
    for i in missing:  # runs of consecutive missing ids
        if spans and spans[-1][1] == i - 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return (f"{state}: {len(set(ids))} of {total} rows out, {twice} twice, missing "
            f"{', '.join(f'{a}-{b}' for a, b in spans) or 'none'} (load {load()})")


def main(argv: Sequence[str] = ()) -> int:
    from crossinfer import _prism

    ap = argparse.ArgumentParser(prog="python -m bench.prism_conservation")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--backlog", type=float, default=20.0)
    ap.add_argument("--live", type=float, default=20.0)
    ap.add_argument("--every", type=float, default=0.5)
    ap.add_argument("--window", type=float, default=4.0)
    ap.add_argument("--cancel", action="store_true")
    ap.add_argument("--after", type=float, default=15.0)
    args = ap.parse_args(list(argv) or None)
    for n in range(args.runs):
        print(f"run {n + 1}: " + run_once(args.backlog, args.live, args.every, args.window,
                                          args.cancel, args.after, str(_prism.locate())),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
