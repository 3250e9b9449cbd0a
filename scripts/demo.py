"""The demo: a Java Beam pipeline classifies rows with a scikit-learn model through Python.

Locally, with no Docker: trains a small model, starts Beam's Prism runner (or, with
`--runner=job-server`, Beam's Python job server) on a free port, runs the Java example
io.crossinfer.examples.ClassifyRows on the PortableRunner with nothing but
`--runner=PortableRunner --jobEndpoint=...` (the Java library starts the crossinfer expansion
service itself, from this Python), prints a summary, and stops everything.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

REPO = Path(__file__).resolve().parent.parent

SPECIES = ["setosa", "versicolor", "virginica"]


def make_data(work: Path, rows: int) -> tuple[Path, Path]:
    """Three Gaussian clusters in 4 features; a model trained on them; JSONL input rows."""
    rng = np.random.default_rng(7)
    centers = np.array([[5.0, 3.4, 1.5, 0.2], [5.9, 2.8, 4.3, 1.3], [6.6, 3.0, 5.5, 2.0]])
    y = rng.integers(0, 3, size=rows + 600)
    x = centers[y] + rng.normal(scale=0.35, size=(len(y), 4))
    model = LogisticRegression(max_iter=1000).fit(x[:600], y[:600])
    model_path = work / "flowers.pkl"
    model_path.write_bytes(pickle.dumps(model))
    lines = [json.dumps({"id": i, "features": [round(float(v), 3) for v in xi]})
             for i, xi in enumerate(x[600:])]
    # Rows a real feed has: each must come back as a failure saying why, never vanish.
    lines += [json.dumps({"id": rows, "features": [5.1, 3.5]}),
              json.dumps({"id": rows + 1, "features": None}),
              json.dumps({"id": rows + 2, "features": [5.1, "n/a", 1.4, 0.2]}),
              '{"id": "broken json']
    input_path = work / "flowers.jsonl"
    input_path.write_text("\n".join(lines) + "\n")
    return model_path, input_path


def start_prism(log: Path) -> tuple[subprocess.Popen, str]:
    """Beam's Prism runner (the binary scripts/setup.sh provides) on a free port."""
    from crossinfer._prism import Prism

    prism = Prism(log).start()
    return prism.proc, prism.job_endpoint


def start_job_server(log: Path) -> tuple[subprocess.Popen, str]:
    """Beam's Python job server on a free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
         "--port", str(port)], stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, f"localhost:{port}"
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the job server did not start; see {log}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--runner", choices=["prism", "job-server"], default="prism",
                        help="Beam's Prism runner (default) or Beam's Python job server")
    args = parser.parse_args()
    classpath = REPO / "java" / "build" / "classpath.txt"
    if not classpath.exists():
        print("java/build/classpath.txt is missing: run `bash scripts/setup.sh` first")
        return 2

    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="crossinfer-demo-"))
    # A model root must be readable by others when the service runs as root: its inspectors
    # then run as nobody (mkdtemp makes the directory 0700).
    work.chmod(0o755)
    model_path, input_path = make_data(work, args.rows)
    print(f"model: {model_path}\ninput: {input_path} ({args.rows} rows + 4 corrupt lines)")

    if args.runner == "prism":
        job_server, endpoint = start_prism(work / "prism.log")
    else:
        job_server, endpoint = start_job_server(work / "job_server.log")
    try:
        print(f"{args.runner} {endpoint}; the Java library starts the expansion service itself")
        out = work / "flowers"
        cmd = ["java", "-cp", classpath.read_text().strip(),
               "io.crossinfer.examples.ClassifyRows", f"--input={input_path}",
               f"--output={out}", "--framework=sklearn", f"--modelUri={model_path}",
               # A pickle the demo trained itself: its directory is a trusted model root.
               f"--trustedModelRoots={model_path.parent}",
               "--runner=PortableRunner", f"--jobEndpoint={endpoint}"]
        # The Python whose crossinfer-expansion-service the Java library starts: this one.
        env = {**os.environ, "CROSSINFER_PYTHON": sys.executable}
        started = time.monotonic()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        java_seconds = time.monotonic() - started
        if done.returncode != 0:
            print(done.stdout, done.stderr[-4000:], sep="\n")
            return 1
    finally:
        job_server.send_signal(signal.SIGTERM)
        try:
            job_server.wait(5)
        except subprocess.TimeoutExpired:
            job_server.kill()  # Beam's job server stops serving on SIGTERM but may not exit
            job_server.wait()

    predictions = [json.loads(l) for l in Path(f"{out}-predictions.jsonl").read_text().splitlines()]
    failures = [json.loads(l) for l in Path(f"{out}-failures.jsonl").read_text().splitlines()]
    counts = collections.Counter(SPECIES[p["label"]] for p in predictions)
    print(f"\nJava pipeline: {done.stdout.strip()} in {java_seconds:.1f} s")
    print("predicted species: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    for p in sorted(predictions, key=lambda p: p["id"])[:3]:
        print(f"  id={p['id']} label={SPECIES[p['label']]} score={p['score']:.3f}")
    print("failures:")
    for f in failures:
        print(f"  [{f['stage']}] {f['error'][:110]}")
    total = len(predictions) + len(failures)
    print(f"\n{total} of {args.rows + 4} input lines accounted for; outputs in {work}; "
          f"demo wall time {time.monotonic() - t0:.1f} s")
    return 0 if total == args.rows + 4 else 1


if __name__ == "__main__":
    sys.exit(main())
