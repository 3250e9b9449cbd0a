"""A 4 GiB PyTorch model used from Java with ``large_model`` on the auto-started service: the
peak memory (RSS) of each process - the JVM, the service, its model inspectors and the
process that holds the shared model - and the run's time.

    python -m bench.big_model [--gib 4] [--runner prism|job-server]

The model (``tests.models:BigTable``) is a safetensors state dict written sparse: the table's
bytes are zeros (a hole in the file, no disk used) except its last row, which the predictions
depend on. Needs the Java build (``gradle build``); the tests run the same program
(tests/test_big_model.py).
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Optional

import numpy as np

FEATURES = 8  # tests.models.N_FEATURES
CLASSES = 2


def write_sparse_safetensors(path: Path, rows: int, width: int, seed: int = 7) -> dict:
    """tests.models:BigTable(rows, width) as a safetensors file whose table is a hole except
    its last row; returns the non-zero weights (head weight, head bias, last row)."""
    rng = np.random.default_rng(seed)
    head_w = rng.normal(size=(CLASSES, FEATURES)).astype(np.float32)
    head_b = rng.normal(size=CLASSES).astype(np.float32)
    last = np.zeros(width, np.float32)
    last[:CLASSES] = rng.normal(scale=3.0, size=CLASSES).astype(np.float32)
    tensors = [("head.bias", head_b), ("head.weight", head_w)]
    header, offset = {}, 0
    for name, value in tensors:
        header[name] = {"dtype": "F32", "shape": list(value.shape),
                        "data_offsets": [offset, offset + value.nbytes]}
        offset += value.nbytes
    table_bytes = rows * width * 4
    header["table"] = {"dtype": "F32", "shape": [rows, width],
                       "data_offsets": [offset, offset + table_bytes]}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for _, value in tensors:
            f.write(value.tobytes())
        start = f.tell()
        f.seek(start + table_bytes - width * 4)  # a hole up to the last row
        f.write(last.tobytes())
    return {"head_w": head_w, "head_b": head_b, "last": last[:CLASSES]}


def expected_labels(weights: dict, x: np.ndarray) -> list[int]:
    logits = x.astype(np.float32) @ weights["head_w"].T + weights["head_b"] + weights["last"]
    return [int(v) for v in logits.argmax(axis=1)]


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _kind(pid: int) -> Optional[str]:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return None
    if "java" in cmd.split(" ")[0]:
        return "jvm"
    if "crossinfer._sandbox.inspector" in cmd or "inspector" in cmd:
        return "inspector"
    if "-m expansion_service" in cmd:
        return "service"
    return "other"


def _mount_ns(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return ""


class PeakMemory:
    """Peak RSS by kind of process, over the processes whose environment holds ``marker``.
    Forks keep the service's command line: those in another mount namespace are inspectors,
    the others Beam's large_model process."""

    def __init__(self, marker: str, every: float = 0.2) -> None:
        self.marker, self.every = marker.encode(), every
        self.peaks: dict[str, int] = {}
        self._forks: set[int] = set()
        self._inspectors: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)

    def _watch(self) -> None:
        service_pids: set[int] = set()
        while not self._stop.is_set():
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                pid = int(entry)
                try:
                    if self.marker not in Path(f"/proc/{pid}/environ").read_bytes():
                        continue
                    ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                kind = _kind(pid)
                if kind == "service":
                    if ppid in service_pids or ppid in self._forks:
                        # A fork of the service: the inspectors (and their zygote) live in a
                        # mount namespace of their own; Beam's large_model process does not.
                        self._forks.add(pid)
                        kind = ("inspector" if _mount_ns(pid) != _mount_ns(ppid)
                                or ppid in self._inspectors else "shared model (large_model)")
                        if kind == "inspector":
                            self._inspectors.add(pid)
                    else:
                        service_pids.add(pid)
                if kind:
                    self.peaks[kind] = max(self.peaks.get(kind, 0), _rss_kib(pid))
            self._stop.wait(self.every)


def run(job_server, workdir: Path, gib: float = 4.0, n: int = 40) -> dict:
    """Writes the model, runs ClassifyRows with large_model; returns what was measured."""
    from tests import models
    from tests._java import EXAMPLES_CLASSPATH, classpath, java_env, run_java

    width = 1024
    rows = max(2, int(gib * (1 << 30)) // (width * 4))
    model = workdir / "models" / "big.safetensors"
    model.parent.mkdir(parents=True, exist_ok=True)
    weights = write_sparse_safetensors(model, rows, width)
    x, _ = models.dataset(n=n, seed=45)
    src = workdir / "rows.jsonl"
    src.write_text("".join(json.dumps({"id": i, "features": [float(v) for v in r]}) + "\n"
                           for i, r in enumerate(x)))
    out = workdir / "out"
    marker = str(uuid.uuid4())
    started = time.monotonic()
    with PeakMemory(marker) as peaks:
        done = run_java(
            classpath(EXAMPLES_CLASSPATH), "io.crossinfer.examples.ClassifyRows",
            f"--input={src}", f"--output={out}", "--framework=pytorch",
            f"--modelUri={model}", "--modelClass=tests.models:BigTable",
            "--allow=tests.models.*", f"--modelRoots={model.parent}", "--largeModel=true",
            "--postprocess=argmax", f"--modelParams=rows={rows}", *job_server.flags(),
            env=java_env(CROSSINFER_BIG_MODEL_RUN=marker), timeout=1200)
    seconds = time.monotonic() - started
    read = lambda kind: [json.loads(l) for l in Path(f"{out}-{kind}.jsonl").read_text()
                         .splitlines() if l.strip()] if Path(f"{out}-{kind}.jsonl").exists() \
        else []
    return {"done": done, "seconds": seconds, "peaks_mib": {k: v // 1024 for k, v in
                                                            peaks.peaks.items()},
            "predictions": read("predictions"), "failures": read("failures"),
            "expected": expected_labels(weights, x), "model_bytes": model.stat().st_size,
            "disk_kib": model.stat().st_blocks // 2}


def main() -> None:
    from tests._java import JobServer, PrismJobServer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=4.0)
    parser.add_argument("--runner", choices=("prism", "job-server"), default="prism")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-big-") as tmp:
        work = Path(tmp)
        (work / "runner").mkdir()
        server = (PrismJobServer if args.runner == "prism" else JobServer)(work / "runner")
        try:
            result = run(server, work, args.gib)
        finally:
            server.stop()
    done = result["done"]
    ok = done.returncode == 0 and [p["label"] for p in sorted(
        result["predictions"], key=lambda p: p["id"])] == result["expected"]
    print(f"model {result['model_bytes'] / (1 << 30):.2f} GiB ({result['disk_kib']} KiB on disk), "
          f"runner {args.runner}, load {os.getloadavg()[0]:.1f}")
    print(f"run {'ok' if ok else 'FAILED'} in {result['seconds']:.1f} s; peak RSS MiB: "
          + ", ".join(f"{k} {v}" for k, v in sorted(result["peaks_mib"].items())))
    if not ok:
        print(done.stderr[-4000:])


if __name__ == "__main__":
    main()
