"""A kept service: it outlives the JVM that started it, says where it listens, and exits by
itself once unused (``--idle-exit``, ``--state-file``).

Every RPC, on the service's port or the worker pool's, is activity; so is a worker that runs a
job. Once nothing has happened for the idle time, the service stops taking RPCs (they get
UNAVAILABLE) and exits. Deciding that and admitting an RPC happen under one lock, so a client
whose health check was answered has the whole idle time to use the service.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any, Callable, Optional

import grpc

_STOPPING = "the crossinfer expansion service is stopping (unused); start another"


class Activity(grpc.ServerInterceptor):
    """Counts RPCs in flight and the time since the last one began or ended."""

    def __init__(self, idle_seconds: float, busy: Callable[[], bool]) -> None:
        self.idle_seconds = idle_seconds
        self._busy = busy
        self._lock = threading.Lock()
        self._last = time.monotonic()
        self._in_flight = 0
        self.stopping = False

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = continuation(details)
        with self._lock:
            if self.stopping:
                return _aborting(handler)
            self._last = time.monotonic()
            if handler is None or not handler.unary_unary:
                return handler  # streams (health Watch may last forever) count as they begin
            self._in_flight += 1
        inner = handler.unary_unary

        def counted(request: Any, context: Any) -> Any:
            try:
                return inner(request, context)
            finally:
                with self._lock:
                    self._in_flight -= 1
                    self._last = time.monotonic()

        return grpc.unary_unary_rpc_method_handler(
            counted, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)

    def should_stop(self) -> bool:
        """True once unused for the idle time (and from then on: no RPC is admitted)."""
        with self._lock:
            if not self.stopping and not self._in_flight and not self._busy() and (
                    time.monotonic() - self._last >= self.idle_seconds):
                self.stopping = True
            return self.stopping


def _aborting(handler: Any) -> Any:
    if handler is None:
        return None

    def abort(request: Any, context: Any) -> Any:
        context.abort(grpc.StatusCode.UNAVAILABLE, _STOPPING)

    kind = (handler.request_streaming, handler.response_streaming)
    make = {(False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler}[kind]
    return make(abort, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


def write_state(path: str, address: str, version: str) -> None:
    """Where this service listens, for the next JVM with the same settings (owner-only)."""
    temporary = f"{path}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"address": address, "pid": os.getpid(), "version": version}, f)
    os.replace(temporary, path)


def remove_state(path: Optional[str]) -> None:
    """Removes the state file if it still names this process (a newer service may own it)."""
    if not path:
        return
    try:
        with open(path) as f:
            if json.load(f).get("pid") != os.getpid():
                return
        os.unlink(path)
    except (OSError, ValueError, AttributeError):
        pass
