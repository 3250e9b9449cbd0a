"""Streaming figures on Prism: swap latency, window end to output, and repeated model-update
runs with a backlog (``python -m bench.streaming``; see bench/README.md).

- ``--latency``: a Python job (and, with ``--java``, the Java one) at ``--rate`` rows/s in
  2-second windows for ``--seconds``, with a new model file every ``--seconds``/4. Swap latency
  is the time from a file landing to the first prediction that names it; window end to output
  is, per prediction, the wall time it reached the sink minus its window's end.
- ``--backlog N``: N runs of the test's job that starts 10 s late with failures and five model
  files (tests/test_model_updates.py), each checked: every row in one output, one model per
  window, never going back, the job ending with its source.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import apache_beam as beam
import numpy as np

from bench.machine import load


def _pct(values: Sequence[float]) -> str:
    if not values:
        return "none"
    return f"p50 {np.percentile(values, 50):.2f} s, p95 {np.percentile(values, 95):.2f} s"


class _Sink(beam.DoFn):
    """Each prediction's [id, window end, model_id, wall time], appended per bundle."""

    def __init__(self, path: str) -> None:
        self._path = path

    def start_bundle(self) -> None:
        self._buf: list[str] = []

    def process(self, row: Any, win: Any = beam.DoFn.WindowParam):
        self._buf.append(json.dumps([row.id, float(win.end), row.model_id, time.time()]))

    def finish_bundle(self) -> None:
        if self._buf:
            with open(self._path, "a", encoding="utf-8") as f:
                f.write("\n".join(self._buf) + "\n")


def _publisher(repo: Path, at: list[float], landed: dict[str, float]) -> threading.Thread:
    from tests import models

    def run() -> None:
        for n, t in enumerate(at, start=1):
            time.sleep(max(0.0, t - time.time()))
            tmp, path = repo / f"m{n}.partial", repo / f"m{n}.pkl"
            models.train_sklearn(tmp, seed=n)
            os.replace(tmp, path)
            st = os.stat(path)
            landed[str(path)] = max(st.st_mtime, st.st_ctime)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _figures(records: list[list[Any]], landed: dict[str, float], what: str) -> None:
    from crossinfer._updates import path_of

    first_use: dict[str, float] = {}
    for _, _, model_id, wall in records:
        path = path_of(model_id)
        first_use[path] = min(first_use.get(path, wall), wall)
    swaps = [first_use[p] - t for p, t in landed.items() if p in first_use]
    # Windows that closed while the job ran (not a backlog from a slow start).
    started = min((wall for *_, wall in records), default=0.0)
    lat = [wall - end for _, end, _, wall in records if end >= started]
    print(f"{what}: {len(records)} predictions; swap latency ({len(swaps)} of {len(landed)} "
          f"files used) {_pct(swaps)}; window end to output ({len(lat)} predictions of "
          f"windows closing after the first output) {_pct(lat)}; load {load()}", flush=True)


def python_latency(rate: int, seconds: float, work: Path) -> None:
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.transforms.periodicsequence import PeriodicImpulse

    import crossinfer
    from crossinfer import _prism
    from tests import models

    repo = work / "py-models"
    repo.mkdir(parents=True)
    models.train_sklearn(repo / "m0.pkl")
    os.utime(repo / "m0.pkl", (1, 1))
    sink = work / "py-out.jsonl"
    per_tick, every = max(1, rate // 10), 0.1  # rows in bursts of a tenth of a second
    p = beam.Pipeline(options=PipelineOptions(
        runner="PrismRunner", prism_location=str(_prism.locate()), streaming=True,
        experiments=["disable_prism_server_singleton"]))
    start = time.time() + 5
    rows = (p | PeriodicImpulse(start_timestamp=start, stop_timestamp=start + seconds,
                                fire_interval=every)
            | beam.FlatMap(lambda t: [
                models.FeatureRow(int(round((float(t) - start) / every)) * per_tick + k,
                                  [0.1 * k] * models.N_FEATURES) for k in range(per_tick)])
            .with_output_types(models.FeatureRow)
            | beam.WindowInto(beam.window.FixedWindows(2)))
    out = rows | crossinfer.Inference(
        "sklearn", str(repo / "m0.pkl"), feature_field="features", passthrough_fields=["id"],
        model_updates=str(repo / "*.pkl"))
    _ = out["predictions"] | beam.ParDo(_Sink(str(sink)))
    landed: dict[str, float] = {}
    result = p.run()
    _publisher(repo, [start + seconds * f for f in (0.25, 0.5, 0.75)], landed)
    state = result.wait_until_finish(duration=int((seconds + 300) * 1000))
    if str(state) != "DONE":
        result.cancel()
    records = [json.loads(x) for x in sink.read_text().splitlines()] if sink.exists() else []
    _figures(records, landed, f"Python on Prism, {rate} rows/s for {seconds:.0f} s ({state})")


def java_latency(rate: int, seconds: float, work: Path, delay: float = 60.0) -> None:
    from tests import models
    from tests._java import EXAMPLES_TEST_CLASSPATH, PrismJobServer, classpath, java_env

    repo = work / "java-models"
    repo.mkdir(parents=True)
    models.train_sklearn(repo / "m0.pkl")
    os.utime(repo / "m0.pkl", (1, 1))
    out = work / "java-out.csv"
    rows = int(rate * seconds)
    prism = PrismJobServer(work)
    landed: dict[str, float] = {}
    java = None
    launched = time.time()
    try:
        java = subprocess.Popen(
            ["java", f"-Drate={rate}", f"-DstartDelayMs={int(delay * 1000)}",
             "-cp", classpath(EXAMPLES_TEST_CLASSPATH), "io.crossinfer.examples.ModelUpdatesStream", str(out), str(rows),
             "sklearn", str(repo / "m0.pkl"), str(repo / "*.pkl"), str(repo),
             *prism.flags()],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=java_env())
        printed: list[str] = []
        reader = threading.Thread(target=lambda: printed.extend(java.stdout), daemon=True)
        reader.start()
        end = time.time() + 300
        while "submitted\n" not in printed and time.time() < end and java.poll() is None:
            time.sleep(0.2)
        begin = max(time.time(), launched + delay)
        _publisher(repo, [begin + seconds * f for f in (0.25, 0.5, 0.75)], landed)
        java.wait(timeout=seconds + 600)
    finally:
        if java is not None and java.poll() is None:
            java.kill()
            java.wait()
        prism.stop()
    records = []
    for line in out.read_text().splitlines() if out.exists() else []:
        if line.startswith("P,"):
            _, i, window, wall, model_id = line.split(",", 4)
            records.append([int(i), int(window) / 1000 + 2, model_id, int(wall) / 1000])
    state = next((x.strip() for x in printed if x.startswith("state=")), "state=?")
    _figures(records, landed, f"Java on Prism, {rate} rows/s, {rows} rows ({state})")


def backlog_runs(n: int, work: Path) -> None:
    from tests.test_model_updates import check_updates_stream, run_updates_stream

    passed = 0
    for i in range(n):
        d = work / f"backlog-{i}"
        d.mkdir(parents=True)
        run = run_updates_stream(d)
        try:
            check_updates_stream(run)
            passed += 1
            verdict = "ok"
        except AssertionError as e:
            verdict = f"FAILED: {str(e)[:300]}"
        windows = len({r["window"] for r in run["records"]})
        print(f"backlog run {i + 1}: {len(run['records'])} rows out of {run['total']}, "
              f"{windows} windows, {run['state']}: {verdict} (load {load()})", flush=True)
    print(f"backlog runs: {passed} of {n} passed", flush=True)


def main(argv: Sequence[str] = ()) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.streaming")
    ap.add_argument("--latency", action="store_true")
    ap.add_argument("--java", action="store_true", help="also the Java job (gradle build first)")
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=40)
    ap.add_argument("--backlog", type=int, default=0)
    ap.add_argument("--java-delay", type=float, default=60.0,
                    help="seconds from the JVM's start to its first row (its start-up)")
    args = ap.parse_args(list(argv) or None)
    work = Path(tempfile.mkdtemp(prefix="crossinfer-streaming-"))
    try:
        if args.latency:
            python_latency(args.rate, args.seconds, work)
            if args.java:
                java_latency(args.rate, args.seconds, work, args.java_delay)
        if args.backlog:
            backlog_runs(args.backlog, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
