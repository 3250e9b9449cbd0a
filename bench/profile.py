"""Profile one (workload, system) run: ``python -m bench.profile W1 crossinfer [--rows N]``.

Runs a warm-up, then one run under cProfile, and writes the top functions by own time and by
cumulative time to bench/profiles/<workload>-<system>.txt (a short text summary).
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import gc
import io
import json
import os
import pstats
import time
from pathlib import Path

from bench import data, systems
from bench.workloads import WORKLOADS

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("workload")
    ap.add_argument("system", help="crossinfer, crossinfer-blocks, stock, source-rows, ...")
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--workdir", default=str(HERE / ".work"))
    ap.add_argument("--kwargs", default="{}", help="extra crossinfer kwargs as JSON")
    ap.add_argument("--batching", default="{}", help="stock batch kwargs as JSON")
    ap.add_argument("--top", type=int, default=35)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    w = WORKLOADS[args.workload]
    paths = {k: str(v) for k, v in data.build_models(Path(args.workdir)).items()}
    if w.data == "sequences":
        data.LOADED["sequences"] = data.sequences(0, args.rows, total=args.rows)
    else:
        data.LOADED["features"] = data.features(0, args.rows)
    extra = json.loads(args.kwargs)

    shuffle = args.system.endswith("+shuffle")
    system = args.system.removesuffix("+shuffle").split("@")[0]

    def once(n: int) -> dict:
        if system.startswith("crossinfer"):
            return systems.run_crossinfer(w, paths, n, system == "crossinfer-blocks", extra,
                                          shuffle)
        if system.startswith("stock"):
            batching = json.loads(args.batching)
            if w.data == "sequences":
                batching = {"max_batch_size": 1}
            return systems.run_stock(w, paths, n, batching, shuffle)
        return systems.run_source(w, n, system.split("-", 1)[1])

    once(min(args.rows, 2000))
    gc_time, gc_count, started = collections.Counter(), collections.Counter(), [0.0]

    def on_gc(phase: str, info: dict) -> None:  # time spent in each GC generation
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            gc_time[info["generation"]] += time.perf_counter() - started[0]
            gc_count[info["generation"]] += 1
    gc.callbacks.append(on_gc)
    prof = cProfile.Profile()
    prof.enable()
    result = once(args.rows)
    prof.disable()
    gc.callbacks.remove(on_gc)
    buf = io.StringIO()
    buf.write(f"# {args.workload} {args.system} {args.tag} rows={args.rows} kwargs={extra} "
              f"CROSSINFER_GC_FREEZE={os.environ.get('CROSSINFER_GC_FREEZE', '1')}\n")
    buf.write(f"# window {result['window']:.3f} s -> {args.rows / result['window']:.0f} rows/s "
              f"(under cProfile; wall {result['wall']:.3f} s)\n")
    buf.write("# cyclic GC during the run: " + ", ".join(
        f"gen{g}: {gc_count[g]} collections, {gc_time[g]:.3f} s" for g in sorted(gc_count))
        + "\n")
    for key in ("tottime", "cumulative"):
        stats = pstats.Stats(prof, stream=buf)
        stats.strip_dirs().sort_stats(key).print_stats(args.top)
    text = buf.getvalue()
    name = f"{args.workload}-{args.system.replace('+', '-')}{'-' + args.tag if args.tag else ''}.txt"
    (HERE / "profiles").mkdir(exist_ok=True)
    (HERE / "profiles" / name).write_text(text)
    print(text[:9000])


if __name__ == "__main__":
    main()
