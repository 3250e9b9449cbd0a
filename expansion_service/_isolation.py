"""Open model files in child processes, under limits, and keep only plain data from them.

Opening a model file can run code (pickle, joblib, TorchScript), loop forever, or allocate
without bound (an ONNX graph that constant-folds into gigabytes). The service therefore never
opens one itself: a small warm pool of child processes does (``python -m
expansion_service._isolation``), each under an address-space limit (RLIMIT_AS) and a CPU limit
(RLIMIT_CPU), with a wall-clock deadline after which the parent kills it. Parent and child speak
one JSON line each way over pipes: kwargs and model key in, ``Signature.to_dict()`` or an error
out. Nothing is unpickled in the parent. A child that overruns, crashes or answers nonsense is
killed and replaced; the request gets a ModelLoadError and the service keeps serving. So does
a request whose model hit the memory limit, however the library reported the refused allocation.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import queue
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Optional

_LOGGER = logging.getLogger("expansion_service")

_MAX_ANSWER = 64 * 1024  # bytes of one answer line; a signature is a few hundred
_WAIT_FOR_CHILD = 120.0  # seconds a request waits for a free inspector
_RECYCLE_AFTER = 200  # requests per child, so state a model leaves behind does not pile up
_HIT_MEMORY_LIMIT = "hit the memory limit"

# How the libraries report an allocation the address-space limit refused: onnxruntime ("Failed
# to allocate memory for requested buffer of size ..."), torch ("DefaultCPUAllocator: can't
# allocate memory"), C++ (std::bad_alloc), the C library (ENOMEM).
_ALLOCATION_FAILED = re.compile(
    r"failed to allocate memory|can't allocate memory|cannot allocate memory|bad_alloc|"
    r"out of memory", re.I)


@dataclass(frozen=True)
class Limits:
    """What one model inspection may spend."""

    timeout: float = 30.0  # wall-clock seconds, then the child is killed
    cpu_seconds: int = 30  # CPU seconds per inspection (RLIMIT_CPU)
    memory_mb: int = 2048  # address space a child may add beyond its libraries (RLIMIT_AS)


@dataclass(frozen=True)
class Policy:
    """What the child enforces itself, the same as the service: callables and model roots."""

    allow: tuple[str, ...]
    model_roots: tuple[str, ...]
    trusted_model_roots: tuple[str, ...]


# --- parent side ---------------------------------------------------------------------------

class _Overrun(Exception):
    pass


class _Child:
    def __init__(self, policy: Policy, limits: Limits) -> None:
        config = json.dumps({"policy": asdict(policy), "limits": asdict(limits)})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "expansion_service._isolation", config],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, close_fds=True)
        self.uses = 0

    def read_line(self, deadline: float) -> bytes:
        fd = self.proc.stdout.fileno()
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Overrun("timeout")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise _Overrun("exited")
            line += chunk
            if len(line) > _MAX_ANSWER:
                raise _Overrun("answer too long")
        return line

    def ask(self, request: dict, deadline: float) -> dict:
        try:
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError as e:
            raise _Overrun("exited") from e
        try:
            answer = json.loads(self.read_line(deadline))
        except ValueError as e:
            raise _Overrun("a malformed answer") from e
        if not isinstance(answer, dict):
            raise _Overrun("a malformed answer")
        return answer

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass


class InspectorPool:
    """``_inspect`` runner: inspects each model in a warm child process, under ``limits``."""

    def __init__(self, policy: Policy, limits: Limits, size: int = 2) -> None:
        self.policy, self.limits, self.size = policy, limits, size
        self._idle: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._children: set[_Child] = set()
        self._closed = False
        for _ in range(size):
            self._replace()

    def _replace(self) -> None:
        # Start a child in the background; it joins the idle queue once it is warm.
        threading.Thread(target=self._start_one, name="inspector-start", daemon=True).start()

    def _start_one(self) -> None:
        with self._lock:
            if self._closed:
                return
            child = _Child(self.policy, self.limits)
            self._children.add(child)
        try:
            ready = json.loads(child.read_line(time.monotonic() + 300))
            if ready != {"ready": True}:
                raise _Overrun("no ready line")
        except (_Overrun, ValueError):
            _LOGGER.error("a model inspector process failed to start; retrying in 5 s")
            self._discard(child)
            time.sleep(5)
            self._replace()
            return
        self._idle.put(child)

    def _discard(self, child: _Child) -> None:
        with self._lock:
            self._children.discard(child)
        child.kill()

    def __call__(self, kwargs: Mapping[str, Any], key: Optional[str]) -> Mapping[str, Any]:
        from crossinfer._errors import ConfigurationError, ModelLoadError

        what = "model_uri" if key is None else f"models[{key!r}]"
        try:
            # Generous: right after start (or a kill) a child needs seconds to import its
            # libraries; the inspection's own deadline starts once one is free.
            child = self._idle.get(timeout=max(self.limits.timeout, _WAIT_FOR_CHILD))
        except queue.Empty:
            raise ModelLoadError(
                f"{what}: the service is busy inspecting other models; try again") from None
        deadline = time.monotonic() + self.limits.timeout
        try:
            answer = child.ask({"kwargs": _plain(kwargs), "key": key}, deadline)
        except _Overrun as e:
            self._discard(child)
            self._replace()
            reason = str(e)
            if reason == "timeout":
                detail = f"did not finish within {self.limits.timeout:g} s"
            else:
                code = child.proc.returncode
                detail = _death(code) if reason == "exited" else f"gave {reason}"
            _LOGGER.warning("model inspection of %s (%s) %s; inspector killed and replaced",
                            what, kwargs.get("framework"), detail)
            raise ModelLoadError(self._stopped(what, detail)) from None
        child.uses += 1
        if child.uses >= _RECYCLE_AFTER:
            self._discard(child)
            self._replace()
        else:
            self._idle.put(child)
        if "signature" in answer:
            return answer["signature"]
        error = answer.get("error")
        if not isinstance(error, dict) or not isinstance(error.get("message"), str):
            raise ModelLoadError(f"{what}: the model inspection returned an unexpected answer")
        message = error["message"][:2000]
        if error.get("type") == "MemoryLimit":
            _LOGGER.warning("model inspection of %s (%s) %s", what, kwargs.get("framework"),
                            _HIT_MEMORY_LIMIT)
            raise ModelLoadError(self._stopped(what, _HIT_MEMORY_LIMIT))
        if error.get("type") == "CallableNotAllowedError":
            from crossinfer._errors import CallableNotAllowedError
            raise CallableNotAllowedError(message)
        if error.get("type") == "ConfigurationError":
            raise ConfigurationError(message)
        raise ModelLoadError(message)

    def _stopped(self, what: str, detail: str) -> str:
        return (f"{what}: opening the model {detail}, so it was stopped (limits: "
                f"{self.limits.timeout:g} s, {self.limits.cpu_seconds} s of CPU, "
                f"{self.limits.memory_mb} MiB of memory)")

    def close(self) -> None:
        """Kill every child (on shutdown)."""
        with self._lock:
            self._closed = True
            children = list(self._children)
            self._children.clear()
        for child in children:
            if child.proc.poll() is None:
                child.proc.kill()


def _death(code: Optional[int]) -> str:
    if code is not None and code < 0:
        sig = -code
        if sig == signal.SIGXCPU:
            return "used more CPU time than allowed"
        return f"crashed (signal {signal.Signals(sig).name})"
    if code == 3:
        return _HIT_MEMORY_LIMIT
    return f"crashed (exit code {code})"


def _plain(value: Any) -> Any:
    """kwargs as JSON: rows (NamedTuples) become maps, bytes are tagged."""
    if hasattr(value, "_asdict"):
        return {k: _plain(v) for k, v in value._asdict().items()}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return {"__bytes__": base64.b64encode(bytes(value)).decode()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"cannot send a {type(value).__name__} to the model inspector")


def _unplain(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__bytes__"}:
            return base64.b64decode(value["__bytes__"])
        return {k: _unplain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unplain(v) for v in value]
    return value


# --- child side ----------------------------------------------------------------------------

def _die_with_parent() -> None:
    # Exit as soon as the service is gone, however it went, even while a model hangs. (Not
    # PR_SET_PDEATHSIG: it fires when the parent *thread* that started the child exits.)
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _vm_size() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _refused_allocation(error: BaseException) -> Optional[str]:
    """``"python"`` if ``error`` came of a MemoryError, ``"library"`` if of an allocation a
    library reports refused, else None. The library's error arrives wrapped: crossinfer
    reports a model that does not load, or fails its probe batch, as its own error."""
    seen: set[int] = set()
    found = None
    cause: Optional[BaseException] = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, MemoryError):
            return "python"
        if _ALLOCATION_FAILED.search(str(cause)):
            found = "library"
        cause = cause.__cause__ or cause.__context__
    return found


def _child_main(config_json: str) -> int:
    import resource

    _die_with_parent()
    # The protocol gets private descriptors; whatever a model prints goes to the service log,
    # and nothing a model does can read the parent's requests.
    answers = os.fdopen(os.dup(1), "wb")
    requests = os.fdopen(os.dup(0), "rb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    config = json.loads(config_json)
    policy, limits = Policy(**{k: tuple(v) for k, v in config["policy"].items()}), Limits(
        **config["limits"])

    from crossinfer import _callables, _inspect, _repository
    from crossinfer._errors import ConfigurationError, CrossinferError, ModelLoadError

    _callables.set_allowlist(list(policy.allow))
    _repository.set_repository(_repository.Repository(
        policy.model_roots, policy.trusted_model_roots))
    from crossinfer import frameworks

    for plugin in frameworks.REGISTRY:
        if not plugin.warm:  # imported by the first inspection that needs it
            continue
        try:
            plugin.load()  # warm: imports cost seconds
        except Exception:  # noqa: BLE001 - a missing framework fails when it is asked for
            pass
    if limits.memory_mb > 0:
        cap = _vm_size() + limits.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    answers.write(b'{"ready": true}\n')
    answers.flush()
    log = logging.getLogger("expansion_service.inspector")
    for line in requests:
        # CPU: this inspection's budget on top of what the child has used so far.
        used = resource.getrusage(resource.RUSAGE_SELF)
        spent = int(used.ru_utime + used.ru_stime) + 1
        resource.setrlimit(resource.RLIMIT_CPU,
                           (spent + limits.cpu_seconds, resource.RLIM_INFINITY))
        try:
            request = json.loads(line)
            answer = {"signature": _inspect.describe_kwargs(
                _unplain(request["kwargs"]), request["key"])}
        except MemoryError:
            os.write(2, b"model inspection hit the memory limit\n")
            os._exit(3)
        except Exception as e:  # noqa: BLE001 - every failure becomes an answer
            log.warning("model inspection failed: %s: %s", type(e).__name__, e)
            refused = _refused_allocation(e)
            if refused == "python":
                # As above, wrapped in another error: whatever state running out of memory
                # left, this process is not asked again.
                os.write(2, b"model inspection hit the memory limit\n")
                os._exit(3)
            if refused == "library":
                # One allocation was refused whole (an onnxruntime or torch buffer): answered,
                # the child goes on.
                kind, message = "MemoryLimit", ""
            elif isinstance(e, ModelLoadError):
                kind, message = "ModelLoadError", getattr(e, "public", None) or str(e)
            elif isinstance(e, ConfigurationError):
                kind, message = type(e).__name__, str(e)
                if kind not in ("CallableNotAllowedError", "ConfigurationError"):
                    kind = "ConfigurationError"
            elif isinstance(e, CrossinferError):
                kind, message = "ModelLoadError", str(e)
            else:
                kind, message = "ModelLoadError", (
                    f"the model could not be inspected ({type(e).__name__}); the service "
                    "log has the details")
            answer = {"error": {"type": kind, "message": message}}
        answers.write(json.dumps(answer).encode() + b"\n")
        answers.flush()
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise SystemExit(_child_main(sys.argv[1]))
