"""Corrupt rows: the cost of 5% bad rows (nulls, NaN, wrong width) against a clean run.

    python -m bench.corrupt [--rows N] [--repeats R]

sklearn LogisticRegression (32 features) through crossinfer.Inference on the DirectRunner,
clean and corrupt runs interleaved; prints the median wall time of each and their ratio (goal:
<= 1.2x). Every row must land in predictions or failures, and every bad row in failures.
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import tempfile
import time
from pathlib import Path

import apache_beam as beam
import numpy as np
from sklearn.linear_model import LogisticRegression

from crossinfer import Inference

WIDTH = 32


class _Count(beam.DoFn):
    counts: dict[str, int] = {}

    def __init__(self, tag: str) -> None:
        self._tag = tag

    def process(self, element):
        _Count.counts[self._tag] = _Count.counts.get(self._tag, 0) + 1


def rows(n: int, share: float, seed: int = 0) -> tuple[list[beam.Row], int]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, WIDTH))
    out, bad = [], 0
    for i in range(n):
        features = x[i].tolist()
        if rng.random() < share:
            bad += 1
            kind = i % 3
            features = (None if kind == 0 else [float("nan")] * WIDTH if kind == 1
                        else features[:-3])
        out.append(beam.Row(id=i, features=features))
    return out, bad


def once(model_uri: str, data: list[beam.Row]) -> tuple[float, dict[str, int]]:
    _Count.counts = {}
    start = time.perf_counter()
    with beam.Pipeline() as p:
        out = p | beam.Create(data) | Inference(framework="sklearn", model_uri=model_uri,
                                                 feature_field="features",
                                                 passthrough_fields=["id"])
        _ = out["predictions"] | "P" >> beam.ParDo(_Count("predictions"))
        _ = out["failures"] | "F" >> beam.ParDo(_Count("failures"))
    return time.perf_counter() - start, dict(_Count.counts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--share", type=float, default=0.05)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, WIDTH))
    model = LogisticRegression(max_iter=300).fit(x, (x[:, 0] > 0).astype(int))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pkl"
        path.write_bytes(pickle.dumps(model))
        clean, _ = rows(args.rows, 0.0)
        corrupt, bad = rows(args.rows, args.share)
        times: dict[str, list[float]] = {"clean": [], "corrupt": []}
        for _ in range(args.repeats):
            for name, data in (("clean", clean), ("corrupt", corrupt)):
                seconds, counts = once(str(path), data)
                want = {"predictions": args.rows - bad} if name == "corrupt" else {
                    "predictions": args.rows}
                assert counts.get("predictions") == want["predictions"], counts
                assert counts.get("failures", 0) == (bad if name == "corrupt" else 0), counts
                times[name].append(seconds)
    c, k = statistics.median(times["clean"]), statistics.median(times["corrupt"])
    print(f"{args.rows} rows, {bad} corrupt ({args.share:.0%}), median of {args.repeats}: "
          f"clean {c:.2f} s ({args.rows / c:,.0f} rows/s), corrupt {k:.2f} s "
          f"({args.rows / k:,.0f} rows/s), ratio {k / c:.2f}x")


if __name__ == "__main__":
    main()
