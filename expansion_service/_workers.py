"""The in-process worker pool, reachable only by the pipeline's own job server.

A worker pool runs whatever pipeline a caller of ``StartWorker`` serves it: Beam's
BeamFnExternalWorkerPoolServicer dials the control endpoint named in the request and executes
the (pickled) functions it is sent there. Served on the service's TCP port, any local user could
have it run their code as the service's user. So it is served on a Unix-domain socket in a
directory only the service's user can enter (mode 0700), and the expanded transforms' EXTERNAL
environment names that socket: the job server, running as the same user, reaches it; other
users cannot. ``StartWorker`` also dials only loopback control endpoints that accept a
connection, and starts workers off the RPC thread, a few at a time, so requests naming dead or
silent endpoints cannot exhaust threads (Beam's harness waits 60 s for its control channel).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
from typing import Optional

from apache_beam.portability.api import beam_fn_api_pb2
from apache_beam.runners.worker import sdk_worker, worker_pool_main

_LOGGER = logging.getLogger("expansion_service")

_ENDPOINT = re.compile(r"^(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[A-Za-z0-9.-]+)):(?P<port>\d{1,5})$")
# Runners pick their own ids (Prism's look like "job-001[go-job-1-...]_go"). The id is only a
# label - a dict key, a thread name, log text and the gRPC "worker_id" header, which must be
# printable ASCII - never a path or a command, so any printable ASCII of bounded length will do.
_WORKER_ID = re.compile(r"^[\x20-\x7e]{1,256}$")
_MAX_STARTING = 4  # workers connecting at once
_MAX_WORKERS = 64  # live in-process workers
_PROBE_SECS = 2.0


def loopback_endpoint(url: str) -> Optional[tuple[str, int]]:
    """(host, port) if ``url`` is host:port on this machine's loopback, else None."""
    match = _ENDPOINT.match(url or "")
    if not match:
        return None
    host = match.group("v6") or match.group("host")
    port = int(match.group("port"))
    if not 0 < port < 65536:
        return None
    if host == "localhost":
        return host, port
    try:
        return (host, port) if ipaddress.ip_address(host).is_loopback else None
    except ValueError:
        return None


class PrivateSocket:
    """A Unix-domain socket path in a fresh directory only this user can enter."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="crossinfer-workers-")
        os.chmod(self.directory, 0o700)
        self.path = os.path.join(self.directory, "pool.sock")

    @property
    def address(self) -> str:
        return f"unix:{self.path}"

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class GuardedWorkerPool(worker_pool_main.BeamFnExternalWorkerPoolServicer):
    """Beam's in-process worker pool, starting workers only for loopback control endpoints."""

    def __init__(self) -> None:
        super().__init__(use_process=False)
        self._starting = threading.BoundedSemaphore(_MAX_STARTING)

    def StartWorker(self, start_worker_request, unused_context=None):
        request = start_worker_request
        endpoint = loopback_endpoint(request.control_endpoint.url)
        if endpoint is None:
            return self._refuse(f"control endpoint {request.control_endpoint.url[:100]!r} is "
                                "not host:port on this machine's loopback")
        if not _WORKER_ID.fullmatch(request.worker_id):
            return self._refuse("the worker id must be 1-256 printable ASCII characters")
        if request.worker_id in self._worker_threads:
            return self._refuse(f"worker {request.worker_id[:100]!r} already exists")
        if len(self._worker_threads) >= _MAX_WORKERS:
            return self._refuse(f"{_MAX_WORKERS} workers are running already")
        try:
            socket.create_connection(endpoint, timeout=_PROBE_SECS).close()
        except OSError:
            return self._refuse(f"nothing accepts connections at {request.control_endpoint.url}")
        if not self._starting.acquire(blocking=False):
            return self._refuse("too many workers are starting at once; retry")
        threading.Thread(target=self._start, args=(request,), daemon=True,
                         name=f"start_worker_{request.worker_id[:64]}").start()
        return beam_fn_api_pb2.StartWorkerResponse()

    def _start(self, request) -> None:
        try:
            worker = sdk_worker.SdkHarness(
                request.control_endpoint.url, worker_id=request.worker_id,
                state_cache_size=self._state_cache_size,
                data_buffer_time_limit_ms=self._data_buffer_time_limit_ms)
        except Exception as e:  # noqa: BLE001 - e.g. the control channel never became ready
            _LOGGER.warning("worker %s did not start: %s", request.worker_id, e)
            return
        finally:
            self._starting.release()
        self._worker_threads[request.worker_id] = worker
        try:
            worker.run()
        finally:
            self._worker_threads.pop(request.worker_id, None)

    @staticmethod
    def _refuse(reason: str):
        _LOGGER.warning("StartWorker refused: %s", reason)
        return beam_fn_api_pb2.StartWorkerResponse(error=f"refused: {reason}")
