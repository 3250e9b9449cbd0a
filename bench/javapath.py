"""W5 and the Java system: the Java example pipeline (ClassifyRows) on Beam's portable runner,
reaching crossinfer through our expansion service, against the same pipeline in Python.

Both read the same JSON-lines file, parse it into rows of (id, features), classify with the W2
MLP and write the predictions as JSON lines. Each run is timed as a whole (wall time); a run
on a small file measures the fixed cost (JVM start, job submission, worker start), so the
throughput reported is the marginal one: (N - n0) / (T(N) - T(n0)).
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import threading
import time
import typing
from pathlib import Path
from typing import Any, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
CLASSPATH = REPO / "java" / "build" / "classpath.txt"
SMALL = 2000


def java_ready() -> Optional[str]:
    """None if the Java path can run here, else why not."""
    if shutil.which("java") is None:
        return "no java on PATH"
    if not CLASSPATH.exists():
        return "java/build/classpath.txt missing: run `gradle -q build writeClasspath`"
    try:
        importlib.import_module("expansion_service._local")
    except Exception as e:  # pylint: disable=broad-except
        return f"expansion_service._local does not import: {type(e).__name__}: {e}"
    return None


def _peak_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _run_watched(cmd: Sequence[str]) -> tuple[float, int, str]:
    """Run cmd; (wall seconds, its peak RSS in kB, its stdout). Raises on failure."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def watch() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], _peak_kb(proc.pid))
            time.sleep(0.2)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    watcher.join()
    if proc.returncode != 0:
        tail = (err or out).strip().splitlines()[-5:]
        raise RuntimeError(f"java exited {proc.returncode}: {' | '.join(tail)}")
    return wall, peak[0], out


def run_java(paths: dict[str, str], inputs: dict[int, Path], workdir: Path,
             repeats: int) -> dict[str, Any]:
    from expansion_service._local import LocalStack

    classpath = CLASSPATH.read_text().strip()
    walls: dict[int, list[float]] = {n: [] for n in inputs}
    peaks = {"java": 0}
    t0 = time.perf_counter()
    from bench import data

    with LocalStack(workdir / "stack", allow=["bench.models.*"], env={"PYTHONPATH": str(REPO)},
                    runner=data.local_runner(),
                    trusted_model_roots=sorted({str(Path(p).parent) for p in paths.values()})
                    ) as stack:
        stack_start = time.perf_counter() - t0
        for _ in range(repeats):
            for n, src in inputs.items():
                cmd = ["java", "-cp", classpath, "io.crossinfer.examples.ClassifyRows",
                       f"--input={src}", f"--output={workdir / 'out' / f'java-{n}'}",
                       "--framework=pytorch", f"--modelUri={paths['mlp']}",
                       "--modelClass=bench.models:MLP", *stack.java_args()]
                wall, peak, out = _run_watched(cmd)
                if f"predictions={n} failures=0" not in out:
                    raise RuntimeError(f"java pipeline wrote {out.strip()!r} for {n} rows")
                walls[n].append(wall)
                peaks["java"] = max(peaks["java"], peak)
        for name, proc in zip(("job_server", "expansion_service"), getattr(stack, "_procs", [])):
            peaks[name] = _peak_kb(proc.pid)
    return {"walls": walls, "peaks_kb": peaks, "stack_start_s": stack_start}


# --- the same pipeline in Python, on the DirectRunner, in this process ----------------------

Line = typing.NamedTuple("Line", [("id", int), ("features", typing.Sequence[float])])


def _parse(line: str):
    record = json.loads(line)
    yield Line(record["id"], record["features"])


def _to_json(row: Any) -> str:
    return json.dumps(row._asdict() if hasattr(row, "_asdict") else row.as_dict())


def run_python_io(paths: dict[str, str], src: Path, out: Path) -> tuple[float, int]:
    import apache_beam as beam
    from crossinfer import Inference

    t0 = time.perf_counter()
    with beam.Pipeline() as p:
        result = (p | beam.io.ReadFromText(str(src))
                  | "Parse" >> beam.FlatMap(_parse).with_output_types(Line)
                  | Inference(framework="pytorch", model_uri=paths["mlp"],
                              model_class="bench.models:MLP", feature_field="features",
                              passthrough_fields=["id"]))
        _ = (result["predictions"] | "PredToJson" >> beam.Map(_to_json)
             | "WritePred" >> beam.io.WriteToText(f"{out}-predictions", ".jsonl",
                                                  shard_name_template=""))
        _ = (result["failures"] | "FailToJson" >> beam.Map(_to_json)
             | "WriteFail" >> beam.io.WriteToText(f"{out}-failures", ".jsonl",
                                                  shard_name_template=""))
    wall = time.perf_counter() - t0
    with open(f"{out}-predictions.jsonl") as f:
        written = sum(1 for _ in f)
    return wall, written


def marginal(walls: dict[int, list[float]]) -> dict[str, Any]:
    """Throughput from the medians of the big and the small runs."""
    import statistics

    (n0, small), (n1, big) = sorted((n, statistics.median(w)) for n, w in walls.items())
    if big - small < 0.05 * big:  # too few rows to tell the rate from the noise (--quick)
        return {"rows_s": n1 / big, "fixed_s": 0.0, "wall_s": big, "small_wall_s": small,
                "wall_rows_s": n1 / big, "repeats": [round(n1 / b) for b in walls[n1]],
                "marginal": False}
    per_run = [(n1 - n0) / max(1e-9, b - small) for b in walls[n1]]
    return {"rows_s": (n1 - n0) / (big - small), "fixed_s": small - n0 * (big - small) / (n1 - n0),
            "wall_s": big, "small_wall_s": small, "wall_rows_s": n1 / big,
            "repeats": [round(x) for x in per_run], "marginal": True}
