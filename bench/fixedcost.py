"""``python -m bench.fixedcost``: the fixed cost of a 2,000-row Java run on the local stack,
step by step from Beam's defaults to what LocalStack does now.

Each configuration runs the benchmark's Java pipeline (RowsToModel, CrossInference, W1 sklearn)
on 2,000 rows: one warm-up run, then the median of ``--repeats`` runs. Reported per step: the
whole run (JVM start to exit) and the job server's own job time ("Completed job in X s").
The steps are cumulative:

1. Beam's defaults: the job server's 5-s gRPC shutdown grace per job, PortableRunner's
   ``waitUntilFinish`` (asks for the job state every 3 s), every classpath jar staged.
2. the job server with a 1-s grace (``expansion_service._job_server``);
3. the job state asked every 50 ms;
4. nothing staged for LOOPBACK (``--filesToStage`` of one small file);
5. JVM flags for short runs (``LocalStack.jvm_options``: class-data sharing, quick JIT tier).

``--matrix`` instead measures the last step on both local runners (``--runners``: Prism and
Beam's Python job server), each with a running expansion service (``withExpansionService``) and
with the one CrossInference starts by itself (its start, from the JVM, is part of every run),
and with ``CROSSINFER_KEEP_SERVICE`` (the warm-up run starts the service, the timed runs find
it kept), against the targets: at most 6 s with a running service, 10 s with the auto-started
one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench import data, peer

REPO = Path(__file__).resolve().parent.parent
STEPS = ["Beam's defaults", "+ job server grace 1 s", "+ job state every 50 ms",
         "+ nothing staged (LOOPBACK)", "+ JVM startup flags (CDS, quick JIT)"]


def _runs(stack, workdir: Path, step: int, repeats: int, src: Path, model: str) -> dict:
    classpath = peer.CLASSPATH.read_text().strip()
    args = stack.java_args()
    if step < 3:
        args = [a for a in args if not a.startswith("--filesToStage")]
    walls, jobs = [], []
    for i in range(repeats + 1):
        jvm = stack.jvm_options(classpath) if step >= 4 else []
        cmd = ["java", *jvm, "-cp", classpath, "io.crossinfer.bench.RowsToModel",
               f"--input={src}", f"--output={workdir / 'out' / 'fixed'}", "--system=crossinfer",
               "--framework=sklearn", f"--modelUri={model}",
               f"--pollMillis={50 if step >= 2 else 0}", *args]
        before = len(re.findall(r"Completed job in ([0-9.]+)", stack.log("job_server")))
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        wall = time.perf_counter() - t0
        if done.returncode or "rows=2000 failures=0" not in done.stdout:
            raise RuntimeError(f"step {step}: exit {done.returncode}: {done.stdout[-300:]} "
                               f"{done.stderr[-500:]}")
        found = [float(x) for x in re.findall(r"Completed job in ([0-9.]+)", stack.log("job_server"))]
        if i == 0:  # warm-up (and, for step 4, the run that writes the class archive)
            continue
        walls.append(wall)
        jobs.append(found[-1] if len(found) > before else float("nan"))
    return {"wall_s": statistics.median(walls), "job_s": statistics.median(jobs),
            "walls": [round(w, 2) for w in walls]}


TARGETS = {"running": 6.0, "auto-started": 10.0, "kept": 10.0}
SERVICES = ("running", "auto-started", "kept")


def _matrix(workdir: Path, runners: list[str], repeats: int, src: Path, model: str,
            env: dict[str, str]) -> list[dict]:
    from expansion_service._local import LocalStack

    classpath = peer.CLASSPATH.read_text().strip()
    results = []
    for runner in runners:
        with LocalStack(workdir / f"matrix-{runner}", env=env, runner=runner,
                        trusted_model_roots=[str(Path(model).parent)]) as stack:
            for service in SERVICES:
                args = stack.java_args()
                if service != "running":
                    args = [a for a in args if not a.startswith("--expansionService")]
                java_env = {**os.environ, **env, "CROSSINFER_PYTHON": sys.executable}
                if service == "kept":  # the warm-up run starts it, the timed runs reuse it
                    cache = workdir / f"matrix-{runner}" / "cache"
                    java_env.update(CROSSINFER_KEEP_SERVICE="120", XDG_CACHE_HOME=str(cache))
                walls = []
                for i in range(repeats + 1):
                    cmd = ["java", *stack.jvm_options(classpath), "-cp", classpath,
                           "io.crossinfer.bench.RowsToModel", f"--input={src}",
                           f"--output={workdir / 'out' / 'fixed'}", "--system=crossinfer",
                           "--framework=sklearn", f"--modelUri={model}", "--pollMillis=50",
                           *args]
                    t0 = time.perf_counter()
                    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                                          env=java_env)
                    wall = time.perf_counter() - t0
                    # The exit code too: a JVM that cannot write its class archive exits 1
                    # after a complete run.
                    if done.returncode or "rows=2000 failures=0" not in done.stdout:
                        raise RuntimeError(f"{runner}/{service}: exit {done.returncode}: "
                                           f"{done.stdout[-300:]} {done.stderr[-800:]}")
                    if i:  # the first run warms up (and writes the JVM's class archive)
                        walls.append(wall)
                if service == "kept":
                    _stop_kept(cache)
                median = statistics.median(walls)
                r = {"runner": runner, "service": service, "wall_s": round(median, 2),
                     "walls": [round(w, 2) for w in walls], "target_s": TARGETS[service],
                     "met": median <= TARGETS[service],
                     "stack_service_start_s": round(stack.service_start_seconds, 1)}
                results.append(r)
                print(f"{runner:10s} {service:12s} median {median:5.1f} s (target "
                      f"{TARGETS[service]:.0f} s) {r['walls']}", flush=True)
    return results


def _stop_kept(cache: Path) -> None:
    for state in (cache / "crossinfer" / "services").glob("*.json"):
        with contextlib.suppress(OSError, ValueError):
            os.kill(json.loads(state.read_text())["pid"], signal.SIGTERM)


def main(argv: list[str] | None = None) -> None:
    from expansion_service._local import LocalStack

    ap = argparse.ArgumentParser(prog="python -m bench.fixedcost", description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", default=str(Path(__file__).resolve().parent / ".work"))
    ap.add_argument("--matrix", action="store_true",
                    help="both runners x running / auto-started service, against the targets")
    ap.add_argument("--runners", default="prism,job-server",
                    help="with --matrix: comma-separated, prism and/or job-server")
    args = ap.parse_args(argv)
    workdir = Path(args.workdir)
    model = str(data.build_models(workdir)["sklearn"])
    src = peer.write_csv(workdir / "rows-f32-2000.csv", 2000)
    (workdir / "out").mkdir(parents=True, exist_ok=True)
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if args.matrix:
        results = _matrix(workdir, args.runners.split(","), args.repeats, src, model, env)
        (workdir / "fixedcost-matrix.json").write_text(json.dumps(results, indent=1))
        return
    results = []
    for grace, steps in (("5", [0]), ("1", [1, 2, 3, 4])):
        os.environ["CROSSINFER_JOB_SERVER_GRACE"] = grace  # read by the job server at start
        t0 = time.perf_counter()
        with LocalStack(workdir / f"fixed-stack-{grace}", env=env,
                        trusted_model_roots=[str(Path(model).parent)]) as stack:
            started = time.perf_counter() - t0
            for step in steps:
                r = _runs(stack, workdir, step, args.repeats, src, model)
                r.update(step=STEPS[step], stack_start_s=round(started, 1))
                results.append(r)
                print(f"{STEPS[step]:40s} run {r['wall_s']:5.1f} s  job {r['job_s']:4.1f} s "
                      f"{r['walls']}", flush=True)
    os.environ.pop("CROSSINFER_JOB_SERVER_GRACE", None)
    (workdir / "fixedcost.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
