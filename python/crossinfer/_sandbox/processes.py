"""The service's handles on inspector processes: the zygote, and each inspector it forks.

Both speak over pipes the service made: one JSON line in, one out, and an exit status; what
they print is relayed into the service log as cut, marked data (``_relay``).
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from typing import Optional

from crossinfer._sandbox.settings import Confinement, Limits

_MAX_ANSWER = 64 * 1024  # bytes of one answer line; a signature is a few hundred
_LINE = 200  # characters of one line an inspector prints, in the service log
_LINES = 200  # lines of one inspector's output in the service log


class Overrun(Exception):
    pass


class Unfenced(Exception):
    """The zygote could not set up a fence (the message names it, and the flag)."""


# A fresh zygote fences itself before crossinfer's package runs (its imports start threads,
# in whose presence the kernel refuses a user namespace): the package module is made but not
# run, the light sandbox modules are imported under it, and its code runs once fenced.
_BOOTSTRAP = (
    "import importlib.util, sys\n"
    "spec = importlib.util.find_spec('crossinfer')\n"
    "package = sys.modules['crossinfer'] = importlib.util.module_from_spec(spec)\n"
    "from crossinfer._sandbox import inspector\n"
    "raise SystemExit(inspector.bootstrap(spec, package, sys.argv[1], int(sys.argv[2])))\n")


def _environment(network: bool) -> dict:
    # A fresh zygote gets none of the service's environment (its credentials, tokens).
    from crossinfer._sandbox.fences import SCRATCH
    from crossinfer._sandbox.inspector import kept_environment

    return {**kept_environment(network), "HOME": SCRATCH, "TMPDIR": SCRATCH}


class Zygote:
    """The one sandboxed process that forks inspectors (``_inspector``).

    ``fork``: a fork of this process, which must have imported what inspectors use and run
    no thread of its own yet (the service, at start: one import of the libraries serves
    both); else a fresh interpreter that imports them (a replacement, later).
    """

    def __init__(self, policy: Confinement, limits: Limits, workdir: str,
                 fork: bool = False) -> None:
        self.control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = tuple(held[3] for held in policy.held if held[3] >= 0) + (theirs.fileno(),)
        if fork:
            self.proc = _Forked(policy, limits, workdir, fds)
        else:
            config = json.dumps({"policy": asdict(policy), "limits": asdict(limits)})
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP, config, str(theirs.fileno())],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                close_fds=True, pass_fds=fds, cwd=workdir, env=_environment(policy.network))
        theirs.close()
        threading.Thread(target=_relay, args=(self.proc.stderr, self.proc.pid), daemon=True,
                         name="zygote-output").start()
        self.lock = threading.Lock()

    def ready(self, deadline: float) -> dict:
        line = _read_line(self.proc.stdout.fileno(), deadline)
        answer = json.loads(line)
        if isinstance(answer, dict) and answer.get("ready") is False and isinstance(
                answer.get("error"), str):
            raise Unfenced(answer["error"][:2000])
        if not isinstance(answer, dict) or answer.get("ready") is not True:
            raise Overrun("no ready line")
        return answer

    def fork(self) -> "Child":
        pipes = [os.pipe() for _ in range(4)]  # requests, answers, output, status
        request_r, request_w = pipes[0]
        answer_r, answer_w = pipes[1]
        output_r, output_w = pipes[2]
        status_r, status_w = pipes[3]
        try:
            with self.lock:
                socket.send_fds(self.control, [b"fork"],
                                [request_r, answer_w, output_w, status_w])
                self.control.settimeout(30)
                pid = int(self.control.recv(32).split(b"\n")[0])
        except (OSError, ValueError) as e:
            for fd in (request_w, answer_r, output_r, status_r):
                os.close(fd)
            raise Overrun("exited") from e
        finally:
            for fd in (request_r, answer_w, output_w, status_w):
                os.close(fd)
        return Child(pid, request_w, answer_r, output_r, status_r)

    def kill(self) -> None:
        from crossinfer._sandbox import fences as _sandbox

        _sandbox.kill_group(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.kill()
        self.control.close()


class _Forked:
    """The zygote as a fork of the service: what ``Zygote`` uses of a ``Popen``."""

    def __init__(self, policy: Confinement, limits: Limits, workdir: str, keep: tuple) -> None:
        from crossinfer._sandbox import inspector as _inspector

        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # or the child writes the service's buffered lines again
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                # As Popen(close_fds, pass_fds, cwd, preexec_fn) does for the exec'd zygote.
                os.dup2(out_w, 1)
                os.dup2(err_w, 2)
                _close_all_but({0, 1, 2, *keep})
                os.chdir(workdir)
                code = _inspector.run_zygote(policy, limits, keep[-1])
            finally:
                os._exit(code)
        os.close(out_w)
        os.close(err_w)
        self.pid, self.returncode = pid, None
        self.stdout, self.stderr = os.fdopen(out_r, "rb"), os.fdopen(err_r, "rb")

    def poll(self) -> Optional[int]:
        if self.returncode is None:
            try:
                done, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                done, status = self.pid, 0
            if done:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except OSError:
            pass


def _close_all_but(keep: set) -> None:
    low = 0
    for fd in sorted(keep):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


def _read_line(fd: int, deadline: float) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise Overrun("timeout")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            raise Overrun("exited")
        line += chunk
        if len(line) > _MAX_ANSWER:
            raise Overrun("answer too long")
    return line


class Child:
    """One forked inspector: its pipes, and its exit status once the zygote reaped it."""

    def __init__(self, pid: int, request_w: int, answer_r: int, output_r: int,
                 status_r: int) -> None:
        self.pid = pid
        self.stdin = os.fdopen(request_w, "wb")
        self.answer_fd = answer_r
        self.status_fd = status_r
        self.returncode: Optional[int] = None
        threading.Thread(target=_relay, args=(os.fdopen(output_r, "rb"), pid), daemon=True,
                         name="inspector-output").start()

    def ask(self, request: dict, deadline: float) -> dict:
        try:
            self.stdin.write(json.dumps(request).encode() + b"\n")
            self.stdin.flush()
        except OSError as e:
            raise Overrun("exited") from e
        try:
            answer = json.loads(_read_line(self.answer_fd, deadline))
        except ValueError as e:
            raise Overrun("a malformed answer") from e
        if not isinstance(answer, dict):
            raise Overrun("a malformed answer")
        return answer

    def exit_code(self, wait: float = 2.0) -> Optional[int]:
        """The exit code (negative: the signal), as the zygote reports it."""
        if self.returncode is None:
            try:
                self.returncode = int(_read_line(self.status_fd, time.monotonic() + wait))
            except (Overrun, ValueError):
                pass
        return self.returncode

    def kill(self) -> None:
        from crossinfer._sandbox import fences as _sandbox

        _sandbox.kill_group(self.pid)  # the inspector, and what it started in its session
        self.exit_code()
        for close in (self.stdin.close, lambda: os.close(self.answer_fd),
                      lambda: os.close(self.status_fd)):
            try:
                close()
            except OSError:
                pass


def _relay(stream, pid: int) -> None:
    # What an inspector prints is data: each line quoted (repr: no raw newline, control or
    # escape character reaches the log), prefixed with whose it is, cut to _LINE characters,
    # and at most _LINES lines of one process (the rest is read and dropped).
    log = logging.getLogger("crossinfer.sandbox.inspector")
    lines = 0
    for raw in iter(lambda: stream.readline(4096), b""):
        lines += 1
        if lines > _LINES:
            if lines == _LINES + 1:
                log.info("inspector %d: further output dropped", pid)
            continue
        text = raw.decode("utf-8", "replace").rstrip("\n")
        cut = text[:_LINE]
        log.info("inspector %d said: %r%s", pid, cut, " (cut)" if len(text) > _LINE else "")
    stream.close()
