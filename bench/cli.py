"""``python -m bench [--quick]``: generate data and models, run every (workload, system) in its
own process, print the Markdown table and write it to bench/RESULTS.md."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import data, machine, plan, table

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _run_job(job: plan.Job, repeats: int, workdir: Path, timeout: float) -> dict[str, Any]:
    spec = {"workload": job.workload, "system": job.system, "rows": job.rows,
            "repeats": repeats, "workdir": str(workdir), "kwargs": job.kwargs}
    env = {**os.environ, **job.env,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "bench.worker", json.dumps(spec)],
                              capture_output=True, text=True, env=env, cwd=str(REPO),
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
            result["process_wall_s"] = time.perf_counter() - t0
            return result
    lines = [l for l in done.stderr.strip().splitlines() if l.strip()]
    return {"error": lines[-1][:300] if lines else f"exit {done.returncode}, no output"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: a few thousand rows, one repeat, a subset of systems")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats (default 3)")
    ap.add_argument("--only", default="", help="comma-separated workloads, e.g. W1,W4")
    ap.add_argument("--systems", default="", help="comma-separated systems, e.g. raw,crossinfer")
    ap.add_argument("--workdir", default=str(HERE / ".work"),
                    help="where generated models and inputs go (default bench/.work)")
    ap.add_argument("--out", default=None,
                    help="Markdown output (default bench/RESULTS.md; --quick: bench/.work/QUICK.md)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per system")
    ap.add_argument("--keep", default=None,
                    help="an earlier run's results.json: its results for the jobs this run "
                         "does not run go into the report too (e.g. rerun only java-peer)")
    ap.add_argument("--runner", choices=["job-server", "prism"], default="job-server",
                    help="the local runner of the Java comparisons: Beam's Python job server "
                         "(default) or Beam's Prism runner")
    args = ap.parse_args(argv)
    os.environ[data.RUNNER_ENV] = args.runner  # the workers (subprocesses) read it

    repeats = args.repeats or (1 if args.quick else 3)
    workdir = Path(args.workdir).resolve()
    out_path = Path(args.out) if args.out else (
        workdir / "QUICK.md" if args.quick else HERE / "RESULTS.md")
    started = time.perf_counter()
    print(f"== models -> {workdir}", flush=True)
    data.build_models(workdir)
    jobs = plan.jobs(args.quick)
    if args.only:
        jobs = [j for j in jobs if j.workload in args.only.split(",")]
    if args.systems:
        jobs = [j for j in jobs if j.system in args.systems.split(",")]
    before = machine.describe()
    results = []
    for job in jobs:
        if job.system in ("java", "java-peer"):
            from bench import javapath, peer
            reason = javapath.java_ready() or (peer.ready() if job.system == "java-peer" else None)
            if reason:
                results.append((job, {"error": reason}))
                print(f"-- {job.workload} {job.system}: not run: {reason}", flush=True)
                continue
        print(f"-- {job.workload} {job.system} ({job.rows} rows) ...", end=" ", flush=True)
        result = _run_job(job, repeats, workdir, args.timeout)
        results.append((job, result))
        print(f"{result['rows_s']:,.0f} rows/s" if "rows_s" in result
              else f"not run: {result['error']}", flush=True)
    elapsed = time.perf_counter() - started
    if args.keep:
        ran = {(j.workload, j.system) for j, _ in results}
        kept = [(plan.Job(**r["job"]), r["result"])
                for r in json.loads(Path(args.keep).read_text())["results"]
                if (r["job"]["workload"], r["job"]["system"]) not in ran]
        results = kept + results
    text = table.render(results, repeats=repeats, quick=args.quick, machine=before,
                        elapsed=elapsed, load_after=machine.load())
    (workdir / "results.json").write_text(json.dumps(
        {"machine": before, "load_after": machine.load(), "elapsed_s": elapsed,
         "repeats": repeats, "results": [{"job": vars(j), "result": r} for j, r in results]},
        indent=1))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(text)
    print()
    print(table.main_table(results))
    print(f"\nwrote {out_path} ({elapsed:.0f} s)")
    failed = [j for j, r in results if "error" in r and j.system not in ("java", "java-peer")]
    return 1 if failed else 0
