"""One (workload, system) measurement in its own process: ``python -m bench.worker SPEC``.

SPEC is JSON: workload, system, rows, repeats, workdir. Prints one JSON line (prefixed
``RESULT ``) with every repeat, the median, the chosen configuration and this process's peak
RSS. Thread settings such as OMP_NUM_THREADS come from the environment the parent gives.
"""

from __future__ import annotations

import json
import logging
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench import data, systems
from bench.workloads import WORKLOADS, Workload

# Stock "tuned": the best of these batch settings (each run with all repeats).
STOCK_BATCHES = [{}, {"min_batch_size": 256, "max_batch_size": 256},
                 {"min_batch_size": 1024, "max_batch_size": 1024}]
RAW_CONFIGS = [(256, 1), (1024, 1), (256, None), (1024, None)]  # (batch, threads; None: default)


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from
    the parent, so a child of a big parent would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _load_data(w: Workload, n: int) -> None:
    if w.data == "sequences":
        data.LOADED["sequences"] = data.sequences(0, n, total=n)
    else:
        data.LOADED["features"] = data.features(0, n)


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    w = WORKLOADS[spec["workload"]]
    system, n, repeats = spec["system"], spec["rows"], spec["repeats"]
    paths = {k: str(v) for k, v in data.build_models(Path(spec["workdir"])).items()}
    _load_data(w, n)
    warm = max(500, n // 50)
    out: dict[str, Any] = {"workload": w.name, "system": system, "rows": n}
    runs_done: list[dict[str, Any]] = []
    shuffle = system.endswith("+shuffle")  # rows cross a Reshuffle first, as after Create
    system = system.removesuffix("+shuffle").split("@")[0]  # "@2": a variant (its env differs)

    if system == "raw":  # every configuration, all repeats: the best median is the limit
        by_config = {(b, t): [systems.run_raw(w, paths, n, b, t) for _ in range(repeats)]
                     for b, t in RAW_CONFIGS}
        medians = {c: statistics.median(r["rows"] / r["window"] for r in runs)
                   for c, runs in by_config.items()}
        config = max(medians, key=medians.get)
        out["config"] = f"batch {config[0]}, {config[1] or 'default'} thread(s)"
        out["trials"] = [{"config": list(c), "rows_s": m} for c, m in medians.items()]
        runs_done = by_config[config]
        run = None
    elif system in ("stock", "stock-tuned", "stock-rows"):
        candidates = STOCK_BATCHES if system == "stock-tuned" else [{}]
        if w.data == "sequences":  # Beam's documented answer to variable lengths
            candidates = [{"max_batch_size": 1}]
        rows = system == "stock-rows"  # schema'd rows + the user's Row -> numpy Map, keyed
        systems.run_stock(w, paths, warm, candidates[0], shuffle, rows)
        # Tuned: every candidate, all repeats; the best median counts (as for the raw loop).
        by_config = [(c, [systems.run_stock(w, paths, n, c, shuffle, rows)
                          for _ in range(repeats)])
                     for c in candidates]
        medians = [statistics.median(r["rows"] / r["window"] for r in runs)
                   for _, runs in by_config]
        best = max(range(len(candidates)), key=medians.__getitem__)
        if len(candidates) > 1:
            out["trials"] = [{"config": _batching(c), "rows_s": m}
                             for (c, _), m in zip(by_config, medians)]
        out["config"] = _batching(candidates[best])
        runs_done = by_config[best][1]
    elif system in ("crossinfer", "crossinfer-blocks"):
        blocks = system == "crossinfer-blocks"
        extra = spec.get("kwargs") or {}
        systems.run_crossinfer(w, paths, warm, blocks, extra, shuffle)
        out["config"] = ", ".join(f"{k}={v}" for k, v in extra.items()) or "defaults"
        run = lambda: systems.run_crossinfer(w, paths, n, blocks, extra, shuffle)  # noqa: E731
    elif system == "java-peer":  # the Java pipeline three ways, interleaved (bench/peer.py)
        from bench import peer
        if n <= 10_000:  # --quick: each system once end to end, no warm-up, no marginal
            out.update(peer.run(w.name, paths, [n], repeats, Path(spec["workdir"]), warm=False))
            out["config"] = f"whole runs of {n:,} rows (smoke run)"
        else:
            small = n // 16
            out.update(peer.run(w.name, paths, [small, n], repeats, Path(spec["workdir"])))
            out["config"] = f"marginal between {small:,} and {n:,} rows"
        out["rows_s"] = out["systems"]["crossinfer"]["rows_s"]
        return out
    elif system in ("java", "python-io"):
        return _measure_io(w, system, n, repeats, paths, Path(spec["workdir"]), out)
    elif system.startswith("source-"):
        shape = system[len("source-"):]
        systems.run_source(w, warm, shape, shuffle)
        out["config"] = shape
        run = lambda: systems.run_source(w, n, shape, shuffle)  # noqa: E731
    else:
        raise ValueError(f"unknown system {system!r}")

    runs = runs_done or [run() for _ in range(repeats)]
    rates = [r["rows"] / r["window"] for r in runs]
    out["rows_s"] = statistics.median(rates)
    out["repeats"] = [round(x) for x in rates]
    out["wall_s"] = statistics.median(r["wall"] for r in runs)
    out["window_s"] = statistics.median(r["window"] for r in runs)
    for key in ("mean_batch", "padded_tokens", "real_tokens", "failures"):
        if key in runs[-1]:
            out[key] = runs[-1][key]
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def _measure_io(w: Workload, system: str, n: int, repeats: int, paths: dict[str, str],
                workdir: Path, out: dict[str, Any]) -> dict[str, Any]:
    """W5: JSON lines in, JSON lines out; Java through the expansion service, or Python."""
    from bench import javapath

    sizes = sorted({javapath.SMALL, n})
    inputs = {k: data.write_jsonl(workdir / f"w5-{k}.jsonl", k) for k in sizes}
    (workdir / "out").mkdir(exist_ok=True)
    if system == "java":
        res = javapath.run_java(paths, inputs, workdir, repeats)
        walls = res["walls"]
        out["peak_rss_mb"] = sum(res["peaks_kb"].values()) / 1024
        out["peak_rss_parts_mb"] = {k: round(v / 1024) for k, v in res["peaks_kb"].items()}
        out["config"] = "ClassifyRows, PortableRunner, LOOPBACK; stack start " \
            f"{res['stack_start_s']:.1f} s not counted"
    else:
        javapath.run_python_io(paths, inputs[sizes[0]], workdir / "out" / "py-warm")
        walls = {k: [] for k in sizes}
        for _ in range(repeats):
            for k in sizes:
                wall, written = javapath.run_python_io(paths, inputs[k], workdir / "out" / f"py-{k}")
                if written != k:
                    raise RuntimeError(f"{written} predictions written for {k} rows")
                walls[k].append(wall)
        out["peak_rss_mb"] = peak_rss_mb()
        out["config"] = "ReadFromText -> json -> Inference -> WriteToText, DirectRunner"
    out.update(javapath.marginal(walls))
    out["small_rows"] = sizes[0]
    return out


def _batching(config: dict[str, int]) -> str:
    if not config:
        return "adaptive batching (default)"
    return ", ".join(f"{k}={v}" for k, v in config.items())


def main() -> None:
    logging.getLogger().setLevel(logging.ERROR)
    spec = json.loads(sys.argv[1])
    t0 = time.perf_counter()
    out = measure(spec)
    out["process_s"] = time.perf_counter() - t0
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
