"""Minimal reproduction: Prism panics "error decoding metrics" when two SDK worker processes of
one job report different metrics under the same short id. Not run in CI.

Prism (v2.77.0) keeps ONE short-id -> metric map per job (jobservices/metrics.go,
metricsStore.shortIDsToKeys), filled from whichever worker it asks first
(MonitoringInfosMetadata). Beam's Python SDK numbers short ids per PROCESS
(sdk_worker.SHORT_ID_CACHE: "1", "2", ... in hex). Two Python worker processes in one job
therefore reuse the same short ids for different metrics; when a counter's payload (one varint)
arrives under a short id Prism has mapped to a distribution, decoding the distribution's sum
fails and Prism panics:

    error decoding metrics beam:metric:user:distribution_int64:v1: {... name:latency}
        &{dist:{Count:0 Sum:0 Min:9223372036854775807 Max:-9223372036854775808}} :EOF

(the struct printed is Prism's fresh accumulator, not the payload: the payload is not an empty
distribution). Java's SDK names its short ids "metric<N>" and never collides with Python's.

Here: one pipeline, two Python environments (different resource hints), served by Beam's own
worker pool, which starts one worker process per environment. Stage A reports distributions,
stage B counters. Usage (PRISM = a prism binary of the installed Beam's version):

    python tests/repro/prism_short_ids.py PRISM [runs] [--prefixed]

It prints, per run, "ok" or the panic. Typical outcome: most runs fail. With ``--prefixed``
each worker process first installs crossinfer's workaround (expansion_service/_short_ids.py:
short ids prefixed by a per-process token), and every run passes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


class _Dist(beam.DoFn):
    def __init__(self) -> None:
        self.ds = [Metrics.distribution("repro", f"latency{i}") for i in range(20)]

    def process(self, x):
        for d in self.ds:
            d.update(x)
        yield x


class _Count(beam.DoFn):
    def __init__(self) -> None:
        self.cs = [Metrics.counter("repro", f"rows{i}") for i in range(20)]

    def process(self, x):
        for c in self.cs:
            c.inc(1000 + x)  # a counter's payload: one varint, not four
        yield x


def run_once(job_port: int, pool_port: int) -> str:
    opts = PipelineOptions(["--runner=PortableRunner", f"--job_endpoint=localhost:{job_port}",
                            "--environment_type=EXTERNAL",
                            f"--environment_config=localhost:{pool_port}"])
    try:
        with beam.Pipeline(options=opts) as p:
            xs = p | beam.Create(list(range(200)), reshuffle=False)
            a = xs | "A" >> beam.ParDo(_Dist()).with_resource_hints(min_ram="1GB")
            _ = a | beam.Reshuffle() | "B" >> beam.ParDo(_Count()).with_resource_hints(
                min_ram="2GB")
        return "ok"
    except Exception as e:  # the job fails when Prism dies
        return f"FAILED: {str(e).splitlines()[0][:200]}"


_SITECUSTOMIZE = "from expansion_service import _short_ids\n_short_ids.install()\n"


def main(argv: list[str]) -> int:
    prefixed = "--prefixed" in argv
    argv = [a for a in argv if a != "--prefixed"]
    prism, runs = argv[0], int(argv[1]) if len(argv) > 1 else 5
    env = dict(os.environ)
    if prefixed:  # the pool's worker processes import sitecustomize at start
        site = tempfile.mkdtemp(prefix="repro-site-")
        with open(os.path.join(site, "sitecustomize.py"), "w") as f:
            f.write(_SITECUSTOMIZE)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (site, env.get("PYTHONPATH")) if p)
    pool_port = _free_port()
    pool = subprocess.Popen([sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                             f"--service_port={pool_port}"], env=env)
    failed = 0
    try:
        _wait(pool_port)
        for i in range(runs):
            job_port = _free_port()
            log = tempfile.NamedTemporaryFile("w", prefix="prism-repro-", suffix=".log",
                                              delete=False)
            proc = subprocess.Popen([prism, f"--job_port={job_port}", "--serve_http=false"],
                                    stdout=log, stderr=subprocess.STDOUT)
            try:
                _wait(job_port)
                outcome = run_once(job_port, pool_port)
                failed += outcome != "ok"
                print(i, outcome, flush=True)
            finally:
                proc.terminate()
                proc.wait(10)
            with open(log.name) as f:
                panic = [line for line in f if "error decoding metrics" in line]
            os.unlink(log.name)
            if panic:
                print("   prism:", panic[0].strip()[:300], flush=True)
    finally:
        pool.terminate()
        pool.wait(10)
    print(f"{failed} of {runs} runs failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
