"""Beam's Prism runner for local runs: find a binary that matches this Beam, build one, start it.

Prism is Beam's portable local runner (batch and streaming), a Go program in Beam's Go module.
Beam's Python ``PrismRunner`` downloads a release binary when it is given none; here a binary is
found (or built once from Beam's Go module) and named explicitly: ``--prism_location`` for
Python pipelines, ``--jobEndpoint`` of a started Prism for Java ones.

A binary is used only if it was built from the Beam release the installed ``apache-beam`` is
(read from the Go build information every Go binary carries), in this order: the environment
variable ``CROSSINFER_PRISM``, a ``prism`` on ``PATH``, ``~/.cache/crossinfer/prism/v<beam>/prism``.

``crossinfer-prism`` (this module's ``main``) prints the binary's path, building it into that cache
first if none matches (``go install``, about 8 minutes on 2 cores; needs the Go toolchain and
access to the Go module proxy); ``--no-build`` only looks.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any, Optional, Union

ENV = "CROSSINFER_PRISM"
MODULE = "github.com/apache/beam/sdks/v2"
PACKAGE = f"{MODULE}/go/cmd/prism"
# A Go binary's build information lists its modules as "mod\t<path>\t<version>" (the main
# module: the one `go install <package>@<version>` was given).
_MODULE_LINE = re.compile(rb"(?:^|\n)(?:mod|dep)\t" + re.escape(MODULE.encode()) +
                          rb"\tv([0-9][0-9A-Za-z.+-]*)")


class PrismNotFound(RuntimeError):
    """No Prism binary of this Beam version is available."""


class PrismMismatch(PrismNotFound):
    """CROSSINFER_PRISM names a binary that is not Prism of this Beam version."""


def beam_version() -> str:
    """The installed apache-beam's version (without importing Beam)."""
    return importlib.metadata.version("apache-beam")


def cache_path(version: Optional[str] = None) -> Path:
    """Where a Prism built for ``version`` (default: this Beam) is kept."""
    return Path.home() / ".cache" / "crossinfer" / "prism" / f"v{version or beam_version()}" / "prism"


def binary_version(path: Union[str, Path]) -> Optional[str]:
    """The Beam release a Prism binary was built from, or None if it says none (or is no file)."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    match = _MODULE_LINE.search(data)
    return match.group(1).decode() if match else None


def _candidates() -> list[tuple[str, Path]]:
    found = []
    if os.environ.get(ENV):
        found.append((f"${ENV}", Path(os.environ[ENV])))
    on_path = shutil.which("prism")
    if on_path:
        found.append(("PATH", Path(on_path)))
    found.append(("the cache", cache_path()))
    return found


def locate() -> Path:
    """The Prism binary to use: see the module's docstring. Raises PrismNotFound saying why."""
    version = beam_version()
    seen = []
    for where, path in _candidates():
        if not (path.is_file() and os.access(path, os.X_OK)):
            if where == f"${ENV}":
                raise PrismMismatch(f"{ENV}={path} is not an executable file: point it at "
                                    f"Prism of Beam {version}, or unset it")
            continue
        found = binary_version(path)
        if found == version:
            return path
        if where == f"${ENV}":  # chosen explicitly: never fall back silently
            raise PrismMismatch(
                f"{ENV}={path} is Prism of Beam {found or 'unknown'}, but the installed "
                f"apache-beam is {version}: point {ENV} at Prism of Beam {version}, or unset "
                "it to use the one `bash scripts/setup.sh` provides")
        seen.append(f"{where}: {path} is Prism of Beam {found or 'unknown'}")
    raise PrismNotFound(
        f"no Prism runner of Beam {version} (the installed apache-beam) is available"
        + (f" ({'; '.join(seen)})" if seen else "") + ". Run `bash scripts/setup.sh` or "
        f"`crossinfer-prism` to build one (needs Go, about 8 minutes), or set "
        f"{ENV} to a Prism binary of Beam {version}.")


def build(version: Optional[str] = None, log: Optional[IO[bytes]] = None) -> Path:
    """``go install`` Prism of Beam ``version`` into its cache directory; its path."""
    version = version or beam_version()
    target = cache_path(version)
    go = shutil.which("go") or shutil.which("go", path="/usr/local/go/bin")  # Go's own install dir
    if go is None:
        raise PrismNotFound(f"building Prism of Beam {version} needs the Go toolchain (`go`), "
                            "which is not on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([go, "install", f"{PACKAGE}@v{version}"],
                          env={**os.environ, "GOBIN": str(target.parent)},
                          stdout=log, stderr=subprocess.STDOUT if log else None, check=False)
    if done.returncode != 0 or binary_version(target) != version:
        raise PrismNotFound(f"`go install {PACKAGE}@v{version}` failed (exit {done.returncode})")
    return target


def free_port() -> int:
    """A port nothing listens on right now (on loopback)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prism:
    """One Prism process on a free port; ``with Prism(log_path) as prism: prism.job_endpoint``.

    Prism serves its job API and the Fn API of its jobs on that one port. Like Beam's Python
    job server, it binds every interface (Prism has no bind-address flag): on a host others can
    reach, keep the port behind a firewall.
    """

    def __init__(self, log_path: Union[str, Path], binary: Optional[Union[str, Path]] = None,
                 timeout: float = 60.0, log_level: str = "warn") -> None:
        self.binary = Path(binary) if binary else locate()
        self.log_path = Path(log_path)
        self.port = free_port()
        self.job_endpoint = f"localhost:{self.port}"
        self._timeout = timeout
        self._log_level = log_level
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> "Prism":
        """Start Prism and wait until its job port accepts connections."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(self.binary), f"--job_port={self.port}", "--serve_http=false",
                 f"--log_level={self._log_level}", "--log_kind=text"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Prism exited with {self.proc.returncode}:\n"
                                   f"{self.log_path.read_text(errors='replace')[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"Prism did not listen on port {self.port} within {self._timeout} s")

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> "Prism":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def main(argv: Optional[list[str]] = None) -> int:
    """Print the Prism binary's path; build it first unless it exists or --no-build is given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-build", action="store_true", help="only look, never build")
    args = parser.parse_args(argv)
    try:
        path = locate()
    except PrismNotFound as e:
        if args.no_build or isinstance(e, PrismMismatch):
            print(e, file=sys.stderr)
            return 1
        print(f"building Prism of Beam {beam_version()} into {cache_path().parent} "
              "(go install; about 8 minutes on 2 cores)", file=sys.stderr, flush=True)
        try:
            path = build(log=sys.stderr.buffer)
        except PrismNotFound as err:
            print(err, file=sys.stderr)
            return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
