"""The Java peer workload: one Java pipeline (CSV of rows -> model -> CSV), three ways.

- ``peer``: Beam's own Java ``RunInference`` (beam-sdks-java-extensions-python) on Beam's stock
  Python expansion service (``expansion_service_main --fully_qualified_name_glob '*'
  --serve_loopback_worker``), keyed by id and fed the user's row-to-numpy function.
- ``crossinfer``: ``CrossInference`` with its defaults (rows cross the boundary in blocks).
- ``crossinfer-rows``: the same with ``withBoundaryBlocks(false)``: one element per row.
- ``crossinfer-memory``: ``CrossInference`` with its defaults on rows made in the JVM (the same
  32 float32-valued features), predictions counted: the Java block path without text I/O, set
  against the Python block path (blocks made in memory, counted).

All three run on the same job server (LocalStack's) and the same machine, interleaved: each
repeat runs every system at every size before the next repeat. Per run it records the wall
time, the job server's own "Completed job in X seconds", the CPU seconds of each process (the
JVM from its rusage; the job server and the expansion services from /proc deltas) and the
JVM's peak RSS. Marginal rates come from the difference between two sizes, so the fixed cost
of a run (JVM start, expansion, job submission, worker start) drops out.
"""

from __future__ import annotations

import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from bench import data

REPO = Path(__file__).resolve().parent.parent
CLASSPATH = REPO / "java" / "build" / "bench-classpath.txt"
SYSTEMS = ("peer", "crossinfer", "crossinfer-rows", "crossinfer-memory")
LABELS = {
    "peer": "Beam's Java RunInference (stock expansion service)",
    "crossinfer": "CrossInference, defaults (blocks across the boundary)",
    "crossinfer-rows": "CrossInference, withBoundaryBlocks(false)",
    "crossinfer-memory": "CrossInference, defaults, rows made in the JVM and counted (no text I/O)",
}
_COMPLETED = re.compile(r"Completed job in ([0-9.]+) seconds")
_TICK = os.sysconf("SC_CLK_TCK")
FRAMEWORK = {"W1": ("sklearn", "sklearn"), "W2": ("pytorch", "mlp"), "W3": ("onnx", "onnx")}


def ready() -> Optional[str]:
    """None if the Java peer workload can run here, else why not."""
    import shutil

    if shutil.which("java") is None:
        return "no java on PATH"
    if not CLASSPATH.exists():
        return "java/build/bench-classpath.txt missing: run `gradle -q benchClasspath`"
    return None


def write_csv(path: Path, n: int) -> Path:
    """``id,f0,...,f31`` per line: the same rows as every other workload (data.features),
    written as the float32 numbers they are (9 significant digits round-trip a float32)."""
    if path.exists() and path.stat().st_size > 0:
        return path
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        for start, block in data.feature_chunks(n):
            ids = np.arange(start, start + len(block)).reshape(-1, 1)
            np.savetxt(f, np.hstack([ids, block.astype(np.float64)]), delimiter=",",
                       fmt=["%d"] + ["%.9g"] * block.shape[1])
    tmp.rename(path)
    return path


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def _peak_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class _StockService:
    """Beam's own expansion service, as Beam's docs start it for Java's RunInference."""

    def __init__(self, workdir: Path) -> None:
        from expansion_service._local import free_port

        self.port = free_port()
        log = open(workdir / "stock_expansion_service.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "apache_beam.runners.portability.expansion_service_main",
             "--port", str(self.port), "--fully_qualified_name_glob", "*",
             "--serve_loopback_worker"],
            stdout=log, stderr=log, cwd=str(workdir),
            env={**os.environ, "PYTHONPATH": os.pathsep.join(
                filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
        log.close()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("Beam's expansion service exited; see "
                                   f"{workdir / 'stock_expansion_service.log'}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("Beam's expansion service did not listen within 120 s")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:  # Beam's servers stop serving but do not exit
                self.proc.kill()
                self.proc.wait()


def _run_java(cmd: Sequence[str]) -> tuple[float, float, int, str]:
    """(wall s, CPU s of the JVM, its peak RSS kB, stdout); raises if it fails."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]
    done = threading.Event()

    def watch() -> None:
        # Not proc.poll(): it would reap the child before os.wait4 below gets its rusage.
        while not done.wait(0.2):
            peak[0] = max(peak[0], _peak_kb(proc.pid))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out_err: list[str] = []
    readers = [threading.Thread(target=lambda s=s: out_err.append(s.read()), daemon=True)
               for s in (proc.stdout, proc.stderr)]
    for r in readers:
        r.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    done.set()
    proc.returncode = os.waitstatus_to_exitcode(status)
    for r in readers:
        r.join()
    watcher.join()
    text = "\n".join(out_err)
    if proc.returncode != 0:
        lines = [l for l in text.splitlines() if "Exception" in l or "Error" in l][:3]
        raise RuntimeError(f"java exited {proc.returncode}: {' | '.join(lines)[:400]}")
    return wall, usage.ru_utime + usage.ru_stime, peak[0], text


def run(workload: str, paths: dict[str, str], sizes: Sequence[int], repeats: int,
        workdir: Path, systems: Sequence[str] = SYSTEMS, warm: bool = True) -> dict[str, Any]:
    """Every system at every size, interleaved, ``repeats`` times; per system the figures."""
    from expansion_service._local import LocalStack

    framework, model = FRAMEWORK[workload]
    inputs = {n: write_csv(workdir / f"rows-f32-{n}.csv", n) for n in sizes}
    classpath = CLASSPATH.read_text().strip()
    (workdir / "out").mkdir(exist_ok=True)
    runs: dict[str, dict[int, list[dict[str, float]]]] = {
        s: {n: [] for n in sizes} for s in systems}
    stock: Optional[_StockService] = None
    # The benchmark's models are files it made itself: their directories are trusted roots.
    with LocalStack(workdir / "stack", allow=["bench.models.*"], runner=data.local_runner(),
                    trusted_model_roots=sorted({str(Path(p).parent) for p in paths.values()}),
                    env={"PYTHONPATH": os.pathsep.join(
                        filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}) as stack:
        if "peer" in systems:
            stock = _StockService(workdir / "stack")
        try:
            job_server, ours = stack._procs[0], stack._procs[1]  # pylint: disable=protected-access
            procs = {"job_server": job_server.pid, "expansion_service": ours.pid}
            if stock is not None:
                procs["stock_expansion_service"] = stock.proc.pid
            for rep in range(0 if warm else 1, repeats + 1):  # round 0 warms up, untimed
                for n in sizes[:1] if rep == 0 else sizes:
                    for system in systems:
                        args = [a for a in stack.java_args()
                                if not a.startswith("--expansionService=")]
                        address = (f"localhost:{stock.port}" if system == "peer" and stock
                                   else stack.expansion_address)
                        source = f"memory:{n}" if system == "crossinfer-memory" else inputs[n]
                        cmd = ["java", "-cp", classpath, "io.crossinfer.bench.RowsToModel",
                               f"--input={source}", f"--output={workdir / 'out' / system}",
                               f"--system={'peer' if system == 'peer' else 'crossinfer'}",
                               f"--boundaryBlocks={'false' if system == 'crossinfer-rows' else 'true'}",
                               f"--framework={framework}", f"--modelUri={paths[model]}",
                               f"--expansionService={address}", *args]
                        for old in (workdir / "out").glob(f"{system}-*"):
                            old.unlink()  # the run counts every file its prefix matches
                        before = {k: _cpu_s(pid) for k, pid in procs.items()}
                        jobs_before = len(_COMPLETED.findall(stack.log("job_server")))
                        wall, java_cpu, peak, out = _run_java(cmd)
                        if f"rows={n} failures=0" not in out:
                            said = [l for l in out.splitlines() if l.startswith("rows=")]
                            raise RuntimeError(f"{system}: {said or out.strip()[-200:]!r} for "
                                               f"{n} rows")
                        job_s = [float(x) for x in _COMPLETED.findall(stack.log("job_server"))]
                        cpu = {k: _cpu_s(pid) - before[k] for k, pid in procs.items()}
                        cpu["java"] = java_cpu
                        if rep == 0:
                            continue
                        runs[system][n].append({
                            "wall": wall, "job": job_s[-1] if len(job_s) > jobs_before else wall,
                            "java_peak_kb": peak, **{f"cpu_{k}": v for k, v in cpu.items()}})
            peaks = {k: _peak_kb(pid) for k, pid in procs.items()}
        finally:
            if stock is not None:
                stock.close()
    return {"systems": {s: summarize(runs[s], peaks, s) for s in systems},
            "sizes": list(sizes)}


def summarize(by_size: dict[int, list[dict[str, float]]], peaks: dict[str, int],
              system: str) -> dict[str, Any]:
    """Marginal rates (whole runs and the job server's job time), fixed cost, CPU per row."""
    ordered = sorted(by_size.items())
    (n0, small), (n1, big) = ordered[0], ordered[-1]
    med = {key: (statistics.median(r[key] for r in small), statistics.median(r[key] for r in big))
           for key in small[0]}
    if n0 == n1:  # one size (smoke run): whole-run rates, no fixed cost
        n0, med = 0, {key: (0.0, hi) for key, (_, hi) in med.items()}

    def marginal(key: str) -> float:
        lo, hi = med[key]
        return (n1 - n0) / max(1e-9, hi - lo)

    out: dict[str, Any] = {
        "rows_s": marginal("job"), "wall_rows_s": marginal("wall"),
        "fixed_s": med["wall"][0] - n0 / marginal("wall"),
        "small_wall_s": med["wall"][0], "big_wall_s": med["wall"][1],
        "job_small_s": med["job"][0], "job_big_s": med["job"][1],
        "repeats_job_rows_s": [round((n1 - n0) / max(1e-9, b["job"] - med["job"][0]))
                               for b in big],
        "cpu_us_per_row": {}, "peak_rss_mb": {},
    }
    for key in med:
        if key.startswith("cpu_"):
            lo, hi = med[key]
            out["cpu_us_per_row"][key[4:]] = max(0.0, (hi - lo) / (n1 - n0) * 1e6)
    out["cpu_us_per_row"] = {k: v for k, v in out["cpu_us_per_row"].items()
                             if not (system == "peer" and k == "expansion_service")
                             and not (system != "peer" and k == "stock_expansion_service")}
    out["peak_rss_mb"]["java"] = max(r["java_peak_kb"] for r in big) / 1024
    python_side = "stock_expansion_service" if system == "peer" else "expansion_service"
    out["peak_rss_mb"]["job_server"] = peaks.get("job_server", 0) / 1024
    out["peak_rss_mb"][python_side] = peaks.get(python_side, 0) / 1024
    return out
