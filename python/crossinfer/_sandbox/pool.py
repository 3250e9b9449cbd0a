"""Open model files in child processes, under limits, and keep only plain data from them.

Opening a model file can run code (pickle, joblib, TorchScript), loop forever, or allocate
without bound (an ONNX graph that constant-folds into gigabytes). The service therefore never
loads one itself: a fresh process does, forked for that **one** inspection by a sandboxed
zygote that has imported the libraries (``inspector``; handles in ``processes``), then killed
with everything it started (its own session, ``_sandbox``): nothing a model does in one
outlives it or reaches a later request. Each child runs under hard limits (RLIMIT_AS, RLIMIT_CPU: hard fixed), with
a wall-clock deadline, an empty working directory, only its pipes and the model roots'
descriptors open, and the fences of ``_sandbox``. Parent and child speak one JSON line each way
over pipes: kwargs and model key in, ``Signature.to_dict()`` or an error out; nothing is
unpickled in the parent, and what the child prints comes back over its own pipe into the
service log, one cut line at a time, marked as the inspector's.

Fair service: answers are cached by the model file's identity and content (one model named 64
times is inspected once, and requests for a model being inspected wait for that one
inspection), and inspections in flight are capped per client (an identity that outlives its
connections: ``set_client``) and in total. A request past a cap waits its turn, round-robin
across clients (``fair``); only a client that queues more than a few, or a wait past
``_WAIT_FOR_TURN``, is refused (``Busy``, RESOURCE_EXHAUSTED to the client). What one
inspection may cost is bounded in CPU time (RLIMIT_CPU, the real bound), so a model that
spins is stopped after its CPU seconds however loaded the machine is; the wall-clock deadline
is a generous backstop for one that sleeps. A cached
answer that a model hit a limit is given after a pause, so repeating it in a loop is cheap for
the service and slow for the one who repeats it.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import os
import re
import signal
import stat
import tempfile
import threading
import time
from collections.abc import Mapping
from typing import Any, Optional

from crossinfer._sandbox.fair import FairSlots
from crossinfer._sandbox.processes import Child, Overrun, Unfenced, Zygote
from crossinfer._sandbox.settings import (
    HIT_MEMORY_LIMIT, LIMIT_HIT, Confinement, Limits, plain)

_LOGGER = logging.getLogger("crossinfer.sandbox")

_WAIT_FOR_CHILD = 120.0  # seconds a request waits for a free inspector
_PER_CLIENT = 2  # inspections in flight for one client
_QUEUED_PER_CLIENT = 8  # inspections of one client waiting for their turn; more are refused
_WAIT_FOR_TURN = 120.0  # seconds an inspection waits for its turn
_CACHED = 512  # answers kept, by model content and arguments
_PENALTY = 1.0  # seconds before a cached answer that a limit was hit is given again
class Busy(Exception):
    """Too many inspections in flight (for this client, or in all): retry later."""


_client = threading.local()


def set_client(peer: Optional[str]) -> None:
    """The client the current thread's expansion serves (an identity that outlives its
    connections, e.g. ``uid:1000``), for the caps and the turns."""
    _client.peer = peer
    _client.refused = False


def refused_busy() -> bool:
    """Whether the current thread's expansion was refused by a cap."""
    return bool(getattr(_client, "refused", False))


# --- parent side ---------------------------------------------------------------------------

class InspectorPool:
    """``_inspect`` runner: each inspection in a fresh process, forked for it by the zygote.

    At most ``size + 2`` inspections run at once, ``_PER_CLIENT`` for one client; the others
    wait their turn, round-robin across clients.
    """

    def __init__(self, policy: Confinement, limits: Limits, size: int = 2,
                 digest: Optional[Any] = None, fork: bool = False,
                 model_bytes: Optional[Any] = None) -> None:
        import dataclasses

        from crossinfer._sandbox import fences as _sandbox

        if _sandbox.weak_allowed() and not policy.weak:
            policy = dataclasses.replace(policy, weak=True)
        self.policy, self.limits, self.size = policy, limits, size
        self.total = size + 2
        self._digest = digest  # uri -> a content digest (or None: not cacheable)
        self._model_bytes = model_bytes  # uri -> its size on disk (or None): the limits grow
        self._lock = threading.Lock()
        self._children: set[Child] = set()
        self._closed = False
        self._slots = FairSlots(self.total, _PER_CLIENT, _QUEUED_PER_CLIENT)
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._pending: dict[str, threading.Event] = {}
        self.workdir = tempfile.mkdtemp(prefix="crossinfer-inspect-")
        os.chmod(self.workdir, 0o500)  # empty, and stays so
        self.subreaper = _sandbox.become_subreaper()
        _sandbox.not_dumpable()  # no process of this uid reads or writes this one's memory
        self.refusal: Optional[str] = None  # a fence that does not hold: why, and the flag
        self.fences: dict[str, bool] = {}
        self._zygote: Optional[Zygote] = None
        self._zygote_ready = threading.Event()
        # ``fork``: the caller has imported the libraries; its fork needs no import of its
        # own (a fork is safe only while this process runs no other thread).
        if fork and threading.active_count() == 1:
            self._start_zygote(fork=True)
            if self.refusal is not None:  # the service refuses to start
                self.close()
                raise _sandbox.FenceError.said(self.refusal)
            return
        if fork:
            _LOGGER.warning("threads already run: the inspectors' zygote imports the "
                            "libraries itself instead of being forked")
        self._replace()

    def _replace(self) -> None:
        # (Re)start the zygote in the background; it is ready once its imports are done.
        self._zygote_ready.clear()
        threading.Thread(target=self._start_zygote, name="zygote-start", daemon=True).start()

    def _start_zygote(self, fork: bool = False) -> None:
        with self._lock:
            if self._closed:
                return
            zygote = Zygote(self.policy, self.limits, self.workdir, fork=fork)
            self._zygote = zygote
        try:
            ready = zygote.ready(time.monotonic() + 600)
        except Unfenced as e:
            # Fail closed: no inspection at all, each refused with what is missing.
            self.refusal = str(e)
            _LOGGER.error("model inspection is refused: %s", self.refusal)
            zygote.kill()
            self._zygote_ready.set()
            return
        except (Overrun, ValueError):
            _LOGGER.error("the model inspectors' zygote failed to start; retrying in 5 s")
            zygote.kill()
            time.sleep(5)
            self._replace()
            return
        if not self.fences and isinstance(ready.get("fences"), dict):
            self.fences = ready["fences"]
            _LOGGER.info("model inspectors run with: %s; subreaper: %s%s", ", ".join(
                f"{k} {'yes' if v else 'NO'}" for k, v in self.fences.items()), self.subreaper,
                "; WEAK SANDBOX, skipped: " + ", ".join(ready["skipped"])
                if ready.get("skipped") else "")
        self._zygote_ready.set()

    def _fork(self) -> Optional[Child]:
        if not self._zygote_ready.wait(max(self.limits.timeout, _WAIT_FOR_CHILD)):
            return None
        if self.refusal is not None:
            return None
        zygote = self._zygote
        try:
            child = zygote.fork()
        except Overrun:
            _LOGGER.error("the model inspectors' zygote stopped answering; restarting it")
            with self._lock:
                if self._zygote is zygote:
                    zygote.kill()
                    self._replace()
            return None
        with self._lock:
            self._children.add(child)
        return child

    def _discard(self, child: Child) -> None:
        from crossinfer._sandbox import fences as _sandbox

        with self._lock:
            self._children.discard(child)
            known = {self._zygote.proc.pid} if self._zygote is not None else set()
        child.kill()
        if self.subreaper:
            for pid in _sandbox.sweep(known):
                _LOGGER.warning("killed process %d that an inspector left behind", pid)

    def __call__(self, kwargs: Mapping[str, Any], key: Optional[str]) -> Mapping[str, Any]:
        what = "model_uri" if key is None else f"models[{key!r}]"
        cache_key = self._cache_key(kwargs, key)
        while cache_key is not None:
            with self._lock:
                cached = self._cache.get(cache_key)
                if cached is not None:
                    self._cache.move_to_end(cache_key)
            if cached is not None:
                if cached.get("error", {}).get("type") in LIMIT_HIT:
                    # A model that hit a limit is an attack or a mistake: asking again costs
                    # the asker a pause (off the GIL), so a client that repeats it in a loop
                    # cannot crowd out other clients' expansions.
                    time.sleep(_PENALTY)
                return _outcome(cached, what, self._stopped)
            with self._lock:
                waiting = self._pending.get(cache_key)
                if waiting is None:
                    self._pending[cache_key] = threading.Event()
                    break
            # The same model is being inspected for someone: its answer is this one too.
            waiting.wait(self.limits_for(kwargs, key).timeout + _WAIT_FOR_CHILD)
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

    @staticmethod
    def _uri(kwargs: Mapping[str, Any], key: Optional[str]) -> Optional[str]:
        return (kwargs.get("models") or {}).get(key) if key is not None else kwargs.get(
            "model_uri")

    def limits_for(self, kwargs: Mapping[str, Any], key: Optional[str]) -> Limits:
        """This inspection's limits: the service's, grown with the model's size on disk."""
        uri = self._uri(kwargs, key)
        size = self._model_bytes(uri) if self._model_bytes is not None and uri else None
        return self.limits.for_model(size)

    def _cache_key(self, kwargs: Mapping[str, Any], key: Optional[str]) -> Optional[str]:
        uri = self._uri(kwargs, key)
        digest = self._digest(uri) if self._digest is not None and uri else None
        if digest is None:
            return None
        rest = {k: v for k, v in kwargs.items() if k not in ("model_uri", "models")}
        return digest + json.dumps(plain(rest), sort_keys=True, default=str)

    def _run(self, kwargs: Mapping[str, Any], key: Optional[str], what: str) -> dict:
        peer = getattr(_client, "peer", None) or "?"
        if not self._slots.acquire(peer, _WAIT_FOR_TURN):
            _client.refused = True
            _LOGGER.warning("inspection refused: this client has %d inspections running and "
                            "more waiting", self._slots.held(peer))
            raise Busy(f"{what}: the service is inspecting as many models for this client as "
                       "it takes at once; retry later")
        try:
            return self._inspect(kwargs, key, what)
        finally:
            self._slots.release(peer)

    def _inspect(self, kwargs: Mapping[str, Any], key: Optional[str], what: str) -> dict:
        # Right after start the zygote needs seconds to import its libraries; the inspection's
        # own deadline starts once the inspector is forked.
        child = self._fork()
        if child is None and self.refusal is not None:
            return {"error": {"type": "ConfigurationError", "message":
                              f"{what}: the service does not inspect models: {self.refusal}"}}
        if child is None:
            return {"error": {"type": "ModelLoadError", "message":
                              f"{what}: the model inspectors are not available; try again"}}
        limits = self.limits_for(kwargs, key)
        started = time.monotonic()
        deadline = started + limits.timeout
        try:
            answer = child.ask({"kwargs": plain(kwargs), "key": key,
                                "limits": dataclasses.asdict(limits)}, deadline)
            error = answer.get("error")
            if isinstance(error, dict) and error.get("type") == "MemoryLimit":
                error["limits"] = dataclasses.asdict(limits)  # said in the message
            _LOGGER.info("inspected %s in process %d: %d ms%s", what[:100], child.pid,
                         round((time.monotonic() - started) * 1000),
                         "" if limits == self.limits else
                         f" (limits grown with the model's size: {limits.timeout:g} s, "
                         f"{limits.memory_mb} MiB)")
            return answer
        except Overrun as e:
            reason = str(e)
            if reason == "timeout":
                detail = f"did not finish within {limits.timeout:g} s"
            else:
                code = child.exit_code(wait=5.0)
                detail = _death(code) if reason == "exited" else f"gave {reason}"
            _LOGGER.warning("model inspection of %s (%s) %s; inspector killed", what,
                            str(kwargs.get("framework"))[:40], detail)
            return {"error": {"type": "Stopped",
                              "message": self._stopped(what, detail, limits)}}
        finally:
            self._discard(child)

    def _stopped(self, what: str, detail: str, limits: Optional[Limits] = None) -> str:
        limits = limits or self.limits
        return (f"{what}: opening the model {detail}, so it was stopped (limits: "
                f"{limits.timeout:g} s, {limits.cpu_seconds} s of CPU, {limits.memory_mb} MiB "
                "of memory, which grow with the model's size; the service's --inspect-timeout, "
                "--inspect-cpu-seconds and --inspect-memory-mb set them for a small model)")

    def close(self) -> None:
        """Kill every child and what it started (on shutdown)."""
        from crossinfer._sandbox import fences as _sandbox

        with self._lock:
            self._closed = True
            children = list(self._children)
            self._children.clear()
            zygote = self._zygote
        for child in children:
            _sandbox.kill_group(child.pid)
        if zygote is not None:
            zygote.kill()
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
        grown = error.get("limits")
        raise ModelLoadError(stopped(what, HIT_MEMORY_LIMIT,
                                     Limits(**grown) if isinstance(grown, dict) else None))
    if error.get("type") == "CallableNotAllowedError":
        raise CallableNotAllowedError(message)
    if error.get("type") == "ConfigurationError":
        raise ConfigurationError(message)
    raise ModelLoadError(message)


def model_bytes(repository: Any) -> Any:
    """uri -> the size of the local model file (a directory: its files' total), opened
    through ``repository``; None if it cannot be told (the inspection says why)."""

    def size(uri: str) -> Optional[int]:
        try:
            fd = repository.open(uri)
        except Exception:  # noqa: BLE001 - refused: the inspection says why
            return None
        if fd is None:
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISDIR(info.st_mode):
                return info.st_size
            total = 0
            for top, _, files in os.walk(f"/proc/self/fd/{fd}"):
                for name in files:
                    try:
                        total += os.lstat(os.path.join(top, name)).st_size
                    except OSError:
                        pass
            return total
        finally:
            os.close(fd)

    return size


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
        return HIT_MEMORY_LIMIT
    return f"crashed (exit code {code})"
