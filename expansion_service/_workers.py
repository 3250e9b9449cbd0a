"""The in-process worker pool, reachable only by the pipeline's own job server.

A worker pool runs whatever pipeline a caller of ``StartWorker`` serves it: Beam's
BeamFnExternalWorkerPoolServicer dials the control endpoint named in the request and executes
the (pickled) functions it is sent there. So the pool listens on a loopback port of its own
(any runner can dial TCP; a Flink job server cannot dial a Unix socket), and serves only the
service's own user (``_access``: the uid of the caller's socket): the job server, running as
that user, reaches it; other users get UNAUTHENTICATED, and model inspectors have no network.
``StartWorker`` dials only loopback control endpoints that accept a connection, and does the
gRPC handshake (short deadline) and the worker's start off the RPC thread, a few at a time, so
requests naming dead or silent endpoints cannot exhaust threads or hold up other callers
(Beam's harness waits 60 s for its control channel). A request that finds every starting slot
taken waits for one (Beam's clients do not retry a refused StartWorker).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
import threading
from typing import Optional

import grpc
from apache_beam.portability.api import beam_fn_api_pb2
from apache_beam.runners.worker import sdk_worker, worker_pool_main

from crossinfer import _beam
from expansion_service import _short_ids

_LOGGER = logging.getLogger("expansion_service")

_ENDPOINT = re.compile(r"^(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[A-Za-z0-9.-]+)):(?P<port>\d{1,5})$")
# Runners pick their own ids (Prism's look like "job-001[go-job-1-...]_go"). The id is only a
# label - a dict key, a thread name, log text and the gRPC "worker_id" header, which must be
# printable ASCII - never a path or a command, so any printable ASCII of bounded length will do.
_WORKER_ID = re.compile(r"^[\x20-\x7e]{1,256}$")
_MAX_STARTING = 16  # workers connecting at once
_MAX_WORKERS = 64  # live in-process workers
_WAIT_TO_START = 60.0  # seconds a StartWorker waits for a starting slot
_PROBE_SECS = 2.0
_CONNECT_SECS = 0.25
_READY_SECS = 5.0  # for the control endpoint's gRPC handshake (Beam's harness waits 60 s)
_STATE_CACHE_SIZE = 0  # Beam's defaults for an in-process worker pool
_DATA_BUFFER_TIME_LIMIT_MS = 0


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


def _speaks_grpc(url: str, endpoint: tuple[str, int]) -> bool:
    """Whether a gRPC server answers at ``url`` soon: a port that accepts and then says
    nothing would hold Beam's harness (and a starting slot) for a minute."""
    try:
        socket.create_connection(endpoint, timeout=_PROBE_SECS).close()
    except OSError:
        return False
    channel = grpc.insecure_channel(url)
    try:
        grpc.channel_ready_future(channel).result(timeout=_READY_SECS)
        return True
    except grpc.FutureTimeoutError:
        return False
    finally:
        channel.close()


class GuardedWorkerPool(worker_pool_main.BeamFnExternalWorkerPoolServicer):
    """Beam's in-process worker pool, starting workers only for loopback control endpoints."""

    def __init__(self) -> None:
        super().__init__(use_process=False, state_cache_size=_STATE_CACHE_SIZE,
                         data_buffer_time_limit_ms=_DATA_BUFFER_TIME_LIMIT_MS)
        self._starting = threading.BoundedSemaphore(_MAX_STARTING)
        self._workers = _beam.worker_threads(self)  # where Beam's StopWorker finds them
        _short_ids.install()  # Prism would mix our metrics with another process's (module doc)

    def running(self) -> int:
        """How many workers run (a job in progress)."""
        return len(self._workers)

    def StartWorker(self, start_worker_request, unused_context=None):
        request = start_worker_request
        endpoint = loopback_endpoint(request.control_endpoint.url)
        if endpoint is None:
            return self._refuse(f"control endpoint {request.control_endpoint.url[:100]!r} is "
                                "not host:port on this machine's loopback")
        if not _WORKER_ID.fullmatch(request.worker_id):
            return self._refuse("the worker id must be 1-256 printable ASCII characters")
        if request.worker_id in self._workers:
            return self._refuse(f"worker {request.worker_id[:100]!r} already exists")
        if len(self._workers) >= _MAX_WORKERS:
            return self._refuse(f"{_MAX_WORKERS} workers are running already")
        try:
            # Loopback: a closed port refuses at once; a full backlog costs _CONNECT_SECS.
            socket.create_connection(endpoint, timeout=_CONNECT_SECS).close()
        except OSError:
            return self._refuse(f"nothing accepts connections at "
                                f"{request.control_endpoint.url[:100]}")
        # A slot frees within _PROBE_SECS + _READY_SECS (a silent endpoint's handshake), so
        # the wait is bounded; Beam's clients never retry a refusal.
        if not self._starting.acquire(timeout=_WAIT_TO_START):
            return self._refuse(f"no worker could start within {_WAIT_TO_START:g} s (too "
                                "many were starting at once); start the job again")
        # The gRPC handshake happens off the request thread: a silent one costs a starting slot
        # for _PROBE_SECS, never another caller's StartWorker.
        threading.Thread(target=self._start, args=(request, endpoint), daemon=True,
                         name=f"start_worker_{request.worker_id[:64]}").start()
        return beam_fn_api_pb2.StartWorkerResponse()

    def _start(self, request, endpoint: tuple[str, int]) -> None:
        try:
            if not _speaks_grpc(request.control_endpoint.url, endpoint):
                self._refuse(f"no gRPC server answers at {request.control_endpoint.url[:100]} "
                             f"within {_READY_SECS:g} s")
                return
            worker = sdk_worker.SdkHarness(
                request.control_endpoint.url, worker_id=request.worker_id,
                state_cache_size=_STATE_CACHE_SIZE,
                data_buffer_time_limit_ms=_DATA_BUFFER_TIME_LIMIT_MS)
        except Exception as e:  # noqa: BLE001 - e.g. the control channel never became ready
            _LOGGER.warning("worker %s did not start: %s", request.worker_id, e)
            return
        finally:
            self._starting.release()
        self._workers[request.worker_id] = worker
        try:
            worker.run()
        finally:
            self._workers.pop(request.worker_id, None)

    @staticmethod
    def _refuse(reason: str):
        _LOGGER.warning("StartWorker refused: %s", reason)
        return beam_fn_api_pb2.StartWorkerResponse(error=f"refused: {reason}")
