"""Helpers for the tests that run real Java programs: Beam's Python job server as a process, and
Java mains run from the classpath files the Gradle build writes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "java" / "build"
EXAMPLES_CLASSPATH = BUILD / "classpath.txt"            # examples + library + runtime deps
EXAMPLES_TEST_CLASSPATH = BUILD / "examples-test-classpath.txt"
LIBRARY_TEST_CLASSPATH = BUILD / "test-classpath.txt"


def classpath(path: Path) -> str:
    if shutil.which("java") is None or not path.exists():
        pytest.fail(f"the Java build is missing ({path.name}): run `bash scripts/setup.sh`")
    return path.read_text().strip()


def java_env(**extra: str) -> dict[str, str]:
    """The environment for a Java program whose CrossInference starts the expansion service:
    this Python, and this checkout's packages and test callables on its path."""
    path = [str(REPO / "python"), str(REPO)]
    if os.environ.get("PYTHONPATH"):
        path.append(os.environ["PYTHONPATH"])
    return {**os.environ, "CROSSINFER_PYTHON": sys.executable,
            "PYTHONPATH": os.pathsep.join(path), **extra}


def run_java(cp: str, main: str, *args: str, env: Optional[dict] = None,
             timeout: float = 600, cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    return subprocess.run(["java", "-cp", cp, main, *args], capture_output=True, text=True,
                          timeout=timeout, env=env or java_env(), cwd=cwd)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JobServer:
    """``python -m apache_beam.runners.portability.local_job_service_main`` on a free port."""

    def __init__(self, workdir: Path, timeout: float = 120.0) -> None:
        self.port = _free_port()
        self.endpoint = f"localhost:{self.port}"
        self._log = open(workdir / "job_server.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
             "--port", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=self._log, cwd=str(workdir))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the job server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the job server did not listen within {timeout} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # Beam's job server stops serving on SIGTERM but may not exit
                self.proc.wait()
        self._log.close()

    def flags(self) -> list[str]:
        """All a Java pipeline needs to run locally: CrossInference does the rest."""
        return ["--runner=PortableRunner", f"--jobEndpoint={self.endpoint}"]


class PrismJobServer:
    """Beam's Prism runner (the binary setup provides) on a free port: a job server that also
    runs streaming pipelines."""

    def __init__(self, workdir: Path) -> None:
        from crossinfer._prism import Prism

        self._prism = Prism(workdir / "prism.log").start()
        self.endpoint = self._prism.job_endpoint
        self.proc = self._prism.proc

    def stop(self) -> None:
        self._prism.stop()

    def flags(self) -> list[str]:
        """All a Java pipeline needs to run locally: CrossInference does the rest."""
        return ["--runner=PortableRunner", f"--jobEndpoint={self.endpoint}"]
