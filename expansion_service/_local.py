"""The local cross-language stack, no Docker: a job server (Beam's Python job server, or Beam's
Prism runner with ``runner="prism"``) and our expansion service as real processes on free
ports. Used by the end-to-end tests and the benchmarks; ``with LocalStack(workdir) as stack:``
starts both and always stops both.
"""

from __future__ import annotations

import hashlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

_LISTENING = re.compile(r"crossinfer expansion service listening on (\S+)")
RUNNERS = ("job-server", "prism")  # Beam's Python job server, Beam's Prism runner


def free_port() -> int:
    """A port nothing listens on right now (on loopback)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, grace: float) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        # Beam's job server stops serving on SIGTERM but does not exit.
        proc.kill()
        proc.wait()


def _drain(stream: Any, path: Path) -> None:
    with open(path, "ab") as out:
        while True:
            chunk = os.read(stream.fileno(), 65536)
            if not chunk:
                return
            out.write(chunk)
            out.flush()


class LocalStack:
    """Job server + expansion service; logs go to ``workdir``."""

    def __init__(self, workdir: Path, allow: Sequence[str] = (),
                 env: Optional[dict[str, str]] = None, timeout: float = 120.0,
                 model_roots: Sequence[str] = (),
                 trusted_model_roots: Sequence[str] = (), runner: str = "job-server") -> None:
        if runner not in RUNNERS:
            raise ValueError(f"runner={runner!r}: one of {', '.join(RUNNERS)}")
        self.runner = runner
        self.workdir = Path(workdir)
        self._allow = tuple(allow)
        self._roots = tuple(str(r) for r in model_roots)
        self._trusted_roots = tuple(str(r) for r in trusted_model_roots)
        self._env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self._timeout = timeout
        self._procs: list[subprocess.Popen] = []
        self.job_endpoint = ""
        self.expansion_address = ""
        self.service_start_seconds = 0.0

    def __enter__(self) -> "LocalStack":
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._start_job_server()
            self._start_service()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop every process this stack started."""
        for proc in reversed(self._procs):
            _stop(proc, grace=5.0)
        self._procs.clear()

    def java_args(self) -> list[str]:
        """Flags for a Java pipeline (ClassifyRows) to run on this stack."""
        # LOOPBACK: the Java worker runs in the submitting JVM, so nothing needs staging; by
        # default PortableRunner uploads every jar of the classpath to the job server (~1 s).
        nothing = self.workdir / "nothing-to-stage.txt"
        if not nothing.exists():
            nothing.write_text("LOOPBACK Java workers run in the submitting JVM\n")
        return ["--runner=PortableRunner", f"--jobEndpoint={self.job_endpoint}",
                "--defaultEnvironmentType=LOOPBACK",
                f"--expansionService={self.expansion_address}", f"--filesToStage={nothing}"]

    def jvm_options(self, classpath: str, startup: bool = True) -> list[str]:
        """JVM flags for short local runs (demo, tests): about 2-3 s less per run.

        A class-data-sharing archive of the classes a run loads (written by the first run
        with this classpath, read by the next ones) and, with ``startup``, the JIT's quick
        tier only, which a run of a few thousand rows never outgrows. Benchmarks of
        throughput leave ``startup`` off.
        """
        key = hashlib.sha1(classpath.encode()).hexdigest()[:12]
        archive = self.workdir / f"classes-{key}.jsa"
        flags = [f"-XX:SharedArchiveFile={archive}" if archive.exists()
                 else f"-XX:ArchiveClassesAtExit={archive}", "-Xlog:cds=off", "-Xlog:cds+dynamic=off"]
        return flags + (["-XX:TieredStopAtLevel=1"] if startup else [])

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _spawn(self, name: str, args: list[str], **kwargs: Any) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "wb")
        proc = subprocess.Popen([sys.executable, *args], stderr=log, env=self._env,
                                cwd=str(self.workdir), **kwargs)
        log.close()  # the child holds its own descriptor
        self._procs.append(proc)
        return proc

    def _start_job_server(self) -> None:
        if self.runner == "prism":
            from crossinfer._prism import Prism

            prism = Prism(self.workdir / "job_server.log", timeout=self._timeout).start()
            self._procs.append(prism.proc)
            self.job_endpoint = prism.job_endpoint
            return
        port = free_port()
        # Beam's local job server, with a short shutdown grace for each job's servers
        # (_job_server says why): about 4 s less per job.
        proc = self._spawn("job_server", ["-m", "expansion_service._job_server", "--port", str(port)],
            stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the job server exited:\n{self.log('job_server')}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    self.job_endpoint = f"localhost:{port}"
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"the job server did not listen within {self._timeout} s")

    def _start_service(self) -> None:
        started = time.monotonic()
        args = ["-m", "expansion_service", "--port", "0"]
        for glob in self._allow:
            args += ["--allow", glob]
        for root in self._roots:
            args += ["--model-root", root]
        for root in self._trusted_roots:
            args += ["--trusted-model-root", root]
        proc = self._spawn("expansion_service", args, stdout=subprocess.PIPE)
        out = b""
        deadline = started + self._timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the expansion service exited:\n{self.log('expansion_service')}")
            ready, _, _ = select.select([proc.stdout], [], [], 0.2)
            if ready:
                out += os.read(proc.stdout.fileno(), 4096)
                match = _LISTENING.search(out.decode(errors="replace"))
                if match:
                    self.expansion_address = match.group(1)
                    self.service_start_seconds = time.monotonic() - started
                    # Keep reading what the service prints (into its log), so a stage that
                    # prints to stdout in the in-process worker pool never fills the pipe.
                    threading.Thread(target=_drain, args=(proc.stdout, self.workdir /
                                     "expansion_service.stdout"), daemon=True).start()
                    return
        raise RuntimeError(f"the expansion service did not start within {self._timeout} s")
