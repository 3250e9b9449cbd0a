"""Open model files in child processes, under limits, and keep only plain data from them.

Opening a model file can run code (pickle, joblib, TorchScript), loop forever, or allocate
without bound (an ONNX graph that constant-folds into gigabytes). The service therefore never
opens one itself: a child process does (``python -m expansion_service._isolation``), started
ahead (its imports take seconds) and used for **one** inspection, then killed with everything
it started (its own session, ``_sandbox``): nothing a model does in one outlives it or reaches
a later request. Each child runs under hard limits (RLIMIT_AS, RLIMIT_CPU: hard fixed), with
a wall-clock deadline, an empty working directory, only its pipes and the model roots'
descriptors open, and the fences of ``_sandbox``. Parent and child speak one JSON line each way
over pipes: kwargs and model key in, ``Signature.to_dict()`` or an error out; nothing is
unpickled in the parent, and what the child prints comes back over its own pipe into the
service log, one cut line at a time, marked as the inspector's.

Fair service: answers are cached by the model file's identity and content (one model named 64
times is inspected once, and requests for a model being inspected wait for that one
inspection), and inspections in flight are capped per client connection and in total; a
request past a cap is refused at once (``Busy``, RESOURCE_EXHAUSTED to the client).
"""

from __future__ import annotations

import base64
import collections
import hashlib
import json
import logging
import os
import queue
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Optional

_LOGGER = logging.getLogger("expansion_service")

_MAX_ANSWER = 64 * 1024  # bytes of one answer line; a signature is a few hundred
_WAIT_FOR_CHILD = 120.0  # seconds a request waits for a free inspector
_PER_CLIENT = 2  # inspections in flight for one client connection
_CACHED = 512  # answers kept, by model content and arguments
_LINE = 200  # characters of one line an inspector prints, in the service log
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
    """What the child enforces itself, the same as the service: callables and model roots
    (``held``: the service's open root descriptors, inherited), and what it cannot see."""

    allow: tuple[str, ...]
    model_roots: tuple[str, ...]
    trusted_model_roots: tuple[str, ...]
    held: tuple = ()  # Repository.held() of the service
    hidden: tuple[str, ...] = ()  # directories covered in the child (the worker pool's)
    network: bool = False  # gs:// roots need it; local ones do not


class Busy(Exception):
    """Too many inspections in flight (for this client, or in all): retry later."""


_client = threading.local()


def set_client(peer: Optional[str]) -> None:
    """The client the current thread's expansion serves (its connection), for the caps."""
    _client.peer = peer
    _client.refused = False


def refused_busy() -> bool:
    """Whether the current thread's expansion was refused by a cap."""
    return bool(getattr(_client, "refused", False))


# --- parent side ---------------------------------------------------------------------------

class _Overrun(Exception):
    pass


class _Child:
    def __init__(self, policy: Policy, limits: Limits, workdir: str) -> None:
        from expansion_service import _sandbox

        config = json.dumps({"policy": asdict(policy), "limits": asdict(limits)})
        fds = tuple(held[3] for held in policy.held if held[3] >= 0)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "expansion_service._isolation", config],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            close_fds=True, pass_fds=fds, cwd=workdir,
            preexec_fn=lambda: _sandbox.preexec(policy.hidden, policy.network))
        threading.Thread(target=_relay, args=(self.proc.stderr, self.proc.pid), daemon=True,
                         name="inspector-output").start()
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
        from expansion_service import _sandbox

        _sandbox.kill_group(self.proc.pid)  # the child, and what it started in its session
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


def _relay(stream, pid: int) -> None:
    # What an inspector prints is data: cut, marked, logged here (it never holds the
    # service's stderr, so it cannot write lines that look like the service's own).
    log = logging.getLogger("expansion_service.inspector")
    for raw in iter(lambda: stream.readline(4096), b""):
        text = raw.decode("utf-8", "replace").rstrip("\n")
        text = "".join(c if c.isprintable() else "?" for c in text)
        log.info("inspector %d said: %s", pid, text[:_LINE] + ("..." if len(text) > _LINE else ""))
    stream.close()


class InspectorPool:
    """``_inspect`` runner: each inspection in a fresh child process under ``limits``.

    ``size`` children are kept started and idle; each serves one inspection and is killed.
    At most ``size + 2`` inspections run at once, ``_PER_CLIENT`` for one client.
    """

    def __init__(self, policy: Policy, limits: Limits, size: int = 2,
                 digest: Optional[Any] = None) -> None:
        from expansion_service import _sandbox

        self.policy, self.limits, self.size = policy, limits, size
        self.total = size + 2
        self._digest = digest  # uri -> a content digest (or None: not cacheable)
        self._idle: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._children: set[_Child] = set()
        self._closed = False
        self._in_flight: collections.Counter = collections.Counter()
        self._running = 0
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._pending: dict[str, threading.Event] = {}
        self.workdir = tempfile.mkdtemp(prefix="crossinfer-inspect-")
        os.chmod(self.workdir, 0o500)  # empty, and stays so
        self.subreaper = _sandbox.become_subreaper()
        self.fences: dict[str, bool] = {}
        for _ in range(size):
            self._replace()

    def _replace(self) -> None:
        # Start a child in the background; it joins the idle queue once it is warm.
        threading.Thread(target=self._start_one, name="inspector-start", daemon=True).start()

    def _start_one(self) -> None:
        with self._lock:
            if self._closed:
                return
            child = _Child(self.policy, self.limits, self.workdir)
            self._children.add(child)
        try:
            ready = json.loads(child.read_line(time.monotonic() + 300))
            if not isinstance(ready, dict) or ready.get("ready") is not True:
                raise _Overrun("no ready line")
        except (_Overrun, ValueError):
            _LOGGER.error("a model inspector process failed to start; retrying in 5 s")
            self._discard(child)
            time.sleep(5)
            self._replace()
            return
        if not self.fences and isinstance(ready.get("fences"), dict):
            self.fences = ready["fences"]
            _LOGGER.info("model inspectors run with: %s; subreaper: %s", ", ".join(
                f"{k} {'yes' if v else 'NO'}" for k, v in self.fences.items()), self.subreaper)
        self._idle.put(child)

    def _discard(self, child: _Child) -> None:
        from expansion_service import _sandbox

        with self._lock:
            self._children.discard(child)
            known = {c.proc.pid for c in self._children}
        child.kill()
        if self.subreaper:
            for pid in _sandbox.sweep(known):
                _LOGGER.warning("killed process %d that an inspector left behind", pid)

    def __call__(self, kwargs: Mapping[str, Any], key: Optional[str]) -> Mapping[str, Any]:
        what = "model_uri" if key is None else f"models[{key!r}]"
        cache_key = self._cache_key(kwargs, key)
        while cache_key is not None:
            with self._lock:
                if cache_key in self._cache:
                    self._cache.move_to_end(cache_key)
                    return _outcome(self._cache[cache_key], what, self._stopped)
                waiting = self._pending.get(cache_key)
                if waiting is None:
                    self._pending[cache_key] = threading.Event()
                    break
            # The same model is being inspected for someone: its answer is this one too.
            waiting.wait(self.limits.timeout + _WAIT_FOR_CHILD)
            if not waiting.is_set():
                break
        try:
            answer = self._run(kwargs, key, what)
            if cache_key is not None:
                with self._lock:
                    self._cache[cache_key] = answer
                    while len(self._cache) > _CACHED:
                        self._cache.popitem(last=False)
            return _outcome(answer, what, self._stopped)
        finally:
            if cache_key is not None:
                with self._lock:
                    event = self._pending.pop(cache_key, None)
                if event is not None:
                    event.set()

    def _cache_key(self, kwargs: Mapping[str, Any], key: Optional[str]) -> Optional[str]:
        uri = (kwargs.get("models") or {}).get(key) if key is not None else kwargs.get(
            "model_uri")
        digest = self._digest(uri) if self._digest is not None and uri else None
        if digest is None:
            return None
        rest = {k: v for k, v in kwargs.items() if k not in ("model_uri", "models")}
        return digest + json.dumps(_plain(rest), sort_keys=True, default=str)

    def _run(self, kwargs: Mapping[str, Any], key: Optional[str], what: str) -> dict:
        peer = getattr(_client, "peer", None) or "?"
        with self._lock:
            if self._running >= self.total or self._in_flight[peer] >= _PER_CLIENT:
                _client.refused = True
                raise Busy(f"{what}: the service is inspecting as many models as it takes at "
                           "once (for this client or in all); retry later")
            self._running += 1
            self._in_flight[peer] += 1
        try:
            return self._inspect(kwargs, key, what)
        finally:
            with self._lock:
                self._running -= 1
                self._in_flight[peer] -= 1
                if not self._in_flight[peer]:
                    del self._in_flight[peer]

    def _inspect(self, kwargs: Mapping[str, Any], key: Optional[str], what: str) -> dict:
        try:
            # Generous: right after start a child needs seconds to import its libraries; the
            # inspection's own deadline starts once one is ready.
            child = self._idle.get(timeout=max(self.limits.timeout, _WAIT_FOR_CHILD))
        except queue.Empty:
            return {"error": {"type": "ModelLoadError", "message":
                              f"{what}: the service is busy inspecting other models; try again"}}
        self._replace()  # every child serves one inspection: start the next one now
        started = time.monotonic()
        deadline = started + self.limits.timeout
        try:
            answer = child.ask({"kwargs": _plain(kwargs), "key": key}, deadline)
            _LOGGER.info("inspected %s in process %d: %d ms", what[:100], child.proc.pid,
                         round((time.monotonic() - started) * 1000))
            return answer
        except _Overrun as e:
            reason = str(e)
            if reason == "timeout":
                detail = f"did not finish within {self.limits.timeout:g} s"
            else:
                child.proc.poll()
                code = child.proc.returncode
                detail = _death(code) if reason == "exited" else f"gave {reason}"
            _LOGGER.warning("model inspection of %s (%s) %s; inspector killed", what,
                            str(kwargs.get("framework"))[:40], detail)
            return {"error": {"type": "Stopped", "message": self._stopped(what, detail)}}
        finally:
            self._discard(child)

    def _stopped(self, what: str, detail: str) -> str:
        return (f"{what}: opening the model {detail}, so it was stopped (limits: "
                f"{self.limits.timeout:g} s, {self.limits.cpu_seconds} s of CPU, "
                f"{self.limits.memory_mb} MiB of memory)")

    def close(self) -> None:
        """Kill every child and what it started (on shutdown)."""
        from expansion_service import _sandbox

        with self._lock:
            self._closed = True
            children = list(self._children)
            self._children.clear()
        for child in children:
            _sandbox.kill_group(child.proc.pid)
            if child.proc.poll() is None:
                child.proc.kill()
        if self.subreaper:
            _sandbox.sweep(set())


def _outcome(answer: dict, what: str, stopped: Any) -> Mapping[str, Any]:
    """The signature in ``answer``, or the error it reports, raised."""
    from crossinfer._errors import CallableNotAllowedError, ConfigurationError, ModelLoadError

    if "signature" in answer:
        return answer["signature"]
    error = answer.get("error")
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        raise ModelLoadError(f"{what}: the model inspection returned an unexpected answer")
    message = error["message"][:2000]
    if error.get("type") == "MemoryLimit":
        raise ModelLoadError(stopped(what, _HIT_MEMORY_LIMIT))
    if error.get("type") == "CallableNotAllowedError":
        raise CallableNotAllowedError(message)
    if error.get("type") == "ConfigurationError":
        raise ConfigurationError(message)
    raise ModelLoadError(message)


def content_digest(repository: Any) -> Any:
    """uri -> sha256 of the local model file's bytes, read by descriptor through
    ``repository`` (digests kept by the file's identity, so an unchanged file is read once)."""
    known: collections.OrderedDict = collections.OrderedDict()
    lock = threading.Lock()

    def digest(uri: str) -> Optional[str]:
        try:
            fd = repository.open(uri)
        except Exception:  # noqa: BLE001 - refused: the inspection says why, uncached
            return None
        if fd is None:
            return None
        try:
            info = os.fstat(fd)
            identity = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns,
                        info.st_ctime_ns)
            with lock:
                if identity in known:
                    return known[identity]
            h = hashlib.sha256()
            while chunk := os.read(fd, 1 << 20):
                h.update(chunk)
            value = f"{identity[0]}:{identity[1]}:{h.hexdigest()}:"
            with lock:
                known[identity] = value
                while len(known) > _CACHED:
                    known.popitem(last=False)
            return value
        finally:
            os.close(fd)

    return digest


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


def _chain_text(error: BaseException) -> str:
    texts, seen, cause = [], set(), error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        texts.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    return " | ".join(texts)


def _child_main(config_json: str) -> int:
    import resource

    from expansion_service import _sandbox

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
    policy, limits = Policy(**{
        k: tuple(v) if isinstance(v, list) else v for k, v in config["policy"].items()}), Limits(
        **config["limits"])

    from crossinfer import _callables, _inspect, _repository
    from crossinfer._errors import ConfigurationError, CrossinferError, ModelLoadError

    _callables.set_allowlist(list(policy.allow))
    # The service's roots, through the descriptors it opened at start-up (never re-opened
    # by name here: a renamed and re-created root is not the one the operator named).
    _repository.set_repository(_repository.Repository(held=[tuple(h) for h in policy.held])
                               if policy.held else _repository.Repository(
                                   policy.model_roots, policy.trusted_model_roots))
    for framework in ("sklearn", "onnx", "pytorch", "custom"):
        try:
            _inspect.framework_module(framework)  # warm: imports cost seconds
        except Exception:  # noqa: BLE001 - a missing framework fails when it is asked for
            pass
    if limits.memory_mb > 0:
        cap = _vm_size() + limits.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    answers.write(json.dumps({"ready": True, "fences": _sandbox.fences()}).encode() + b"\n")
    answers.flush()
    log = logging.getLogger("expansion_service.inspector")
    for line in requests:
        # CPU: this inspection's budget on top of what the imports used; hard = soft, so
        # code in the model cannot raise it.
        used = resource.getrusage(resource.RUSAGE_SELF)
        spent = int(used.ru_utime + used.ru_stime) + 1
        # (One second above the soft limit: SIGXCPU first, so the parent can say which limit.)
        resource.setrlimit(resource.RLIMIT_CPU,
                           (spent + limits.cpu_seconds, spent + limits.cpu_seconds + 1))
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
            if refused == "library":
                # The service cuts each line of ours: say first what was refused.
                found = _ALLOCATION_FAILED.search(_chain_text(e))
                if found:
                    text = _chain_text(e)
                    log.warning("allocation refused: %s", text[found.start():found.start() + 120])
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
        break  # one inspection per process
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise SystemExit(_child_main(sys.argv[1]))
