"""The Markdown report: machine, method, the table, and each target with its measured ratio."""

from __future__ import annotations

from typing import Any, Optional

from bench.plan import LABELS, Job
from bench.workloads import WORKLOADS

Results = list[tuple[Job, dict[str, Any]]]


def _rate(results: Results, workload: str, system: str) -> Optional[float]:
    for job, r in results:
        if job.workload == workload and job.system == system and "rows_s" in r:
            return r["rows_s"]
    return None


def _fmt_rate(x: Optional[float]) -> str:
    if x is None:
        return "—"
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x:,.0f}"


def _ratio(a: Optional[float], b: Optional[float]) -> str:
    if a is None or b is None or b == 0:
        return "—"
    r = a / b
    return f"{r:.3f}x" if r < 0.1 else f"{r:.2f}x" if r < 10 else f"{r:.0f}x"


def _notes(job: Job, r: dict[str, Any], results: Results) -> str:
    notes = [job.note] if job.note else []
    if "mean_batch" in r and not job.system.startswith("crossinfer-blocks"):
        notes.append(f"mean batch {r['mean_batch']:.0f}")
    if r.get("padded_tokens") and r.get("real_tokens"):
        notes.append(f"padded/real tokens {r['padded_tokens'] / r['real_tokens']:.3f}")
    if r.get("marginal"):
        notes.append(f"marginal rate; fixed cost per run {r['fixed_s']:.1f} s, "
                     f"whole run {r['wall_s']:.1f} s = {r['wall_rows_s']:,.0f} rows/s")
    elif "fixed_s" in r:
        notes.append(f"whole-run rate (too few rows for a marginal rate), {r['wall_s']:.1f} s")
    if job.system == "java":
        notes.append(f"× Python I/O path {_ratio(r.get('rows_s'), _rate(results, 'W5', 'python-io'))}")
    if "peak_rss_parts_mb" in r:
        notes.append("RSS = " + " + ".join(f"{k} {v}" for k, v in r["peak_rss_parts_mb"].items()))
    if r.get("failures"):
        notes.append(f"{r['failures']} failures")
    return "; ".join(n for n in notes if n)


def _peer(results: Results, workload: str, system: str) -> Optional[dict[str, Any]]:
    for job, r in results:
        if job.workload == workload and job.system == "java-peer" and "systems" in r:
            return r["systems"].get(system)
    return None


def peer_table(results: Results) -> str:
    """The Java pipeline three ways (bench/peer.py), ratios to Beam's Java RunInference."""
    from bench.peer import LABELS as SYSTEM_LABELS

    head = ("| Workload | Pipeline | System | Rows | rows/s (marginal, job) | × Beam's Java "
            "RunInference | rows/s (marginal, whole runs) | fixed cost per run (s) "
            "| CPU µs/row by process | Peak RSS (MB) by process |\n"
            "|---|---|---|---:|---:|---:|---:|---:|---|---|")
    lines = [head]
    label = LABELS["java-peer"]
    for job, r in results:
        if job.system != "java-peer":
            continue
        if "systems" not in r:
            lines.append(f"| {job.workload} | {label} | not run: {r.get('error', '?')} "
                         f"| {job.rows:,} | — | — | — | — | | |")
            continue
        peer_rate = r["systems"].get("peer", {}).get("rows_s")
        for system, x in r["systems"].items():
            cpu = ", ".join(f"{k} {v:.1f}" for k, v in x["cpu_us_per_row"].items())
            cpu += f" (all {sum(x['cpu_us_per_row'].values()):.1f})"
            rss = ", ".join(f"{k} {v:,.0f}" for k, v in x["peak_rss_mb"].items())
            cells = [job.workload, label, SYSTEM_LABELS[system], f"{job.rows:,}",
                     _fmt_rate(x["rows_s"]), _ratio(x["rows_s"], peer_rate),
                     _fmt_rate(x["wall_rows_s"]), f"{x['fixed_s']:.1f}", cpu, rss]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main_table(results: Results, shuffled: bool = False) -> str:
    """The fused runs (shuffled=False) or the runs after a shuffle, ratios within the group."""
    suffix = "+shuffle" if shuffled else ""
    head = ("| Workload | System | Configuration | Rows | rows/s (median) | × raw loop "
            "| × stock default | × stock tuned | Peak RSS (MB) | Notes |\n"
            "|---|---|---|---:|---:|---:|---:|---:|---:|---|")
    lines = [head]
    for job, r in results:
        if job.system.endswith("+shuffle") != shuffled or job.system == "java-peer":
            continue
        w = job.workload
        label = LABELS.get(job.system, job.system)
        if "rows_s" not in r:
            lines.append(f"| {w} | {label} | not run: {r.get('error', '?')} | {job.rows:,} "
                         "| — | — | — | — | — | |")
            continue
        ref = w if w != "W5" else None
        rate = r["rows_s"]
        cells = [
            w, label, r.get("config", ""), f"{job.rows:,}", _fmt_rate(rate),
            _ratio(rate, _rate(results, ref, "raw")) if ref else "—",
            _ratio(rate, _rate(results, ref, "stock" + suffix)) if ref else "—",
            _ratio(rate, _rate(results, ref, "stock-tuned" + suffix)) if ref else "—",
            f"{r.get('peak_rss_mb', 0):,.0f}", _notes(job, r, results),
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _padding(results: Results) -> Optional[float]:
    for job, r in results:
        if job.workload == "W4" and job.system == "crossinfer" and r.get("real_tokens"):
            return r["padded_tokens"] / r["real_tokens"] - 1.0
    return None


def targets(results: Results) -> str:
    rows = ["| Target | Goal | Measured | Met |", "|---|---:|---:|---|"]

    def add(name: str, goal: float, value: Optional[float], higher: bool = True,
            fmt: str = "{:.2f}x") -> None:
        if value is None:
            rows.append(f"| {name} | {'≥' if higher else '≤'} {fmt.format(goal)} "
                        "| not measured | — |")
            return
        met = value >= goal if higher else value <= goal
        rows.append(f"| {name} | {'≥' if higher else '≤'} {fmt.format(goal)} "
                    f"| {fmt.format(value)} | {'yes' if met else '**no**'} |")

    def ratio(w: str, a: str, b: str) -> Optional[float]:
        x, y = _rate(results, w, a), _rate(results, w, b)
        return None if x is None or y is None else x / y

    def peer_ratio(w: str, a: str, b: str) -> Optional[float]:
        x, y = _peer(results, w, a), _peer(results, w, b)
        return None if x is None or y is None else x["rows_s"] / y["rows_s"]

    for w in ("W1", "W2", "W3"):
        add(f"{w} Java path (defaults) vs Beam's Java RunInference, marginal rows/s", 3,
            peer_ratio(w, "crossinfer", "peer"))
    for w in ("W1", "W2", "W3"):
        java = _peer(results, w, "crossinfer-memory")  # rows made in the JVM, counted
        py = _rate(results, w, "crossinfer-blocks")  # blocks made in memory, counted
        add(f"{w} Java path with blocks (rows made in the JVM) vs the Python block path", 0.5,
            None if java is None or py is None else java["rows_s"] / py)
    for w in ("W1", "W2", "W3"):
        add(f"{w} Python element path on rows vs stock RunInference on rows + user's Map", 1.5,
            ratio(w, "crossinfer", "stock-rows"))
    fixed = [x["fixed_s"] for w in ("W1", "W2", "W3")
             for x in [_peer(results, w, "crossinfer")] if x is not None and x["fixed_s"] > 0]
    add("Local fixed cost of a Java run (CrossInference, median over W1-W3, s)", 6.0,
        sorted(fixed)[len(fixed) // 2] if fixed else None, higher=False, fmt="{:.1f}")
    for suffix, where in (("", "fused source"), ("+shuffle", "after a shuffle")):
        for w in ("W1", "W2", "W3"):
            add(f"{w} element path vs stock default ({where})", 10,
                ratio(w, "crossinfer" + suffix, "stock" + suffix))
            add(f"{w} element path vs stock tuned ({where})", 2,
                ratio(w, "crossinfer" + suffix, "stock-tuned" + suffix))
    for w in ("W2", "W3"):
        add(f"{w} block path vs raw model loop (1 model thread, the default)", 0.5,
            ratio(w, "crossinfer-blocks", "raw"))
        add(f"{w} block path vs raw model loop (CROSSINFER_MODEL_THREADS=2)", 0.5,
            ratio(w, "crossinfer-blocks@2", "raw"))
    add("W4 crossinfer vs max_batch_size=1 (default threads)", 5, ratio("W4", "crossinfer", "stock"))
    add("W4 crossinfer vs max_batch_size=1 (OMP_NUM_THREADS=1)", 5,
        ratio("W4", "crossinfer", "stock-tuned"))
    add("W4 padding waste (padded / real tokens - 1)", 0.15, _padding(results), higher=False,
        fmt="{:.1%}")
    add("W5 Java path vs Python path (same I/O)", 0.8, ratio("W5", "java", "python-io"))
    return "\n".join(rows)


METHOD = """\
## What is measured

- **Each (workload, system) runs in its own process** (`python -m bench.worker`), so its peak
  RSS (`ru_maxrss`, or `VmHWM` of each process for the Java path) is its own. Every Beam
  system imports `apache_beam.ml.inference`, which imports torch: about 750 MB before any model.
- **rows/s is the median of the timed repeats** (one warm-up run first, not timed). For the
  Python pipelines (DirectRunner, in process) a repeat is timed from the source's first row to
  the sink's last `finish_bundle`: the processing window, without pipeline construction and
  model load (wall time is about 0.2-0.3 s more per run). The raw model loop is timed around
  the loop only.
- **Rows are generated inside the pipeline** (Impulse -> ParDo over arrays made before the
  run, one float32 matrix from a fixed seed), not `beam.Create` over a list: Create encodes
  every element and puts a Reshuffle (a fusion break) in front of the model, and then the
  runner's shuffle and the element coders are what is measured (see the notes in
  bench/README.md). The floors (source -> sink) show what the source costs on its own.
- **Stock Beam** is `RunInference(SklearnModelHandlerNumpy | PytorchModelHandlerTensor |
  OnnxModelHandlerNumpy)` fed one numpy array (torch tensor) per row. *default*: default
  batching and threads. *tuned*: `OMP_NUM_THREADS=1` in its process and the best median of
  adaptive, 256 and 1024 fixed batches (each run with all repeats; the choice is in the
  table). onnxruntime sizes its own pool and ignores OMP_NUM_THREADS. For W4 both use Beam's
  documented workaround for variable lengths, `max_batch_size=1`.
- **crossinfer, rows in**: `crossinfer.Inference` with its defaults on schema'd rows
  (`id: int64, features: array<float64>`, a NamedTuple registered with the RowCoder, features
  as Python lists as a RowCoder decodes them), predictions as rows `id, label, score,
  model_id`. **Blocks in**: `blocks=True`, each element
  is 4096 rows (`id: array<int64>, features: 2-D array`), predictions come out as blocks.
- **The raw model loop** is the model called directly on slices of the preloaded matrix, timed
  around the loop: every combination of batch 256/1024 and 1/default intra-op threads is run
  (all repeats) and the best median is "the limit". For W4 it is sorted by length and padded
  per batch (the least padding any batching can reach).
- **W5 / Java**: `io.crossinfer.examples.ClassifyRows` (JSON lines in, JSON lines out) on the
  PortableRunner against Beam's Python job server, with LOOPBACK Java workers and the Python
  stages in our expansion service's worker. The Python side is the same pipeline
  (ReadFromText -> json -> Inference -> WriteToText) on the DirectRunner. Both are timed per
  whole run on a 2,000-row file and on the full file; rows/s is the marginal rate
  (N - 2000) / (T(N) - T(2000)), the fixed cost per run (JVM start, job submission, expansion)
  is reported beside it. Starting the job server and the expansion service once is not counted.
"""


def render(results: Results, *, repeats: int, quick: bool, machine: dict[str, str],
           elapsed: float, load_after: str) -> str:
    title = "# crossinfer benchmark" + (" (--quick smoke run: not a measurement)" if quick else "")
    workloads = "\n".join(f"- **{w.name}**: {w.title}" for w in WORKLOADS.values())
    return f"""{title}

Generated by `python -m bench{' --quick' if quick else ''}` ({repeats} timed repeat(s) per
system, {elapsed / 60:.1f} min in all). Ratios are within this one run.

## Machine

- CPU: {machine['cpu']}; memory {machine['memory']}
- OS: {machine['os']}; Python {machine['python']}; {machine['java']}
- {machine['packages']}
- Load average (1, 5, 15 min) before: {machine['load_before']}; after: {load_after}. The
  machine is shared and noisy: single repeats vary by up to 2x; the medians are steadier.

## Workloads

{workloads}

## Results: rows generated in the pipeline, fused with the model (the runner and the transform)

{main_table(results)}

## Results: the Java pipeline, Beam's Java RunInference vs CrossInference

The same Java pipeline (CSV of rows -> model -> CSV, `bench/java/.../RowsToModel.java`) on the
PortableRunner with LOOPBACK Java workers against one Python job server, interleaved. rows/s
is marginal: (N1 - N0) / (T(N1) - T(N0)), from the job server's own job time ("Completed job
in X seconds") and from whole runs (JVM start to exit); the fixed cost per run is the whole
run's time at N0 minus N0 rows at the marginal rate. CPU per row is marginal too, per process:
the JVM (its rusage), the job server and the expansion service that runs the Python stages
(/proc deltas). Peak RSS: the JVM at N1; the job server's and expansion services' peaks over
the whole workload (the job server is shared by the three systems).

{peer_table(results)}

## Results: rows after a shuffle (Reshuffle before the model, as `beam.Create` or any GroupByKey delivers them)

Every element is encoded and decoded once (numpy arrays and torch tensors by pickle, crossinfer's
schema'd rows by the RowCoder). This is how the first release's reference figures were measured (`beam.Create`).
The raw-loop column refers to the fused table's raw loop.

{main_table(results, shuffled=True)}

## Targets

{targets(results)}

What was changed to get there, and what limits the targets not met (with profiles): see
bench/README.md and bench/profiles/.

{METHOD}"""
