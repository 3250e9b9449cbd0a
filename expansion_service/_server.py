"""gRPC wiring: expansion, artifacts, health and (locally) a worker pool; signals; exit."""

from __future__ import annotations

import contextlib
import importlib
import ipaddress
import logging
import os
import signal
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from typing import Optional

_LOGGER = logging.getLogger("expansion_service")

_SHUTDOWN_GRACE_SECS = 0.5


@dataclass(frozen=True)
class ServiceConfig:
    """What the command line asked for."""

    host: str
    port: int
    allow: tuple[str, ...] = ()
    container_image: Optional[str] = None
    model_roots: tuple[str, ...] = ()
    trusted_model_roots: tuple[str, ...] = ()
    inspect_timeout: float = 30.0
    inspect_cpu_seconds: int = 30
    inspect_memory_mb: int = 2048
    inspectors: int = 2


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _loopback_target(host: str, port: int) -> str:
    # The job server dials the worker pool on this machine; a wildcard bind is reachable there
    # on the loopback address.
    if host in ("", "0.0.0.0"):
        return f"127.0.0.1:{port}"
    if host == "::":
        return f"localhost:{port}"
    return _hostport(host, port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(config: ServiceConfig) -> int:
    """Serve until SIGTERM/SIGINT, then exit the process with code 0 (never returns then)."""
    started = time.perf_counter()
    # Beam and crossinfer are imported here, not at module level, so the CLI stays light.
    import grpc
    from apache_beam.internal import pickler
    from apache_beam.options.pipeline_options import SetupOptions
    from apache_beam.portability.api import (
        beam_artifact_api_pb2_grpc,
        beam_expansion_api_pb2,
        beam_expansion_api_pb2_grpc,
        beam_fn_api_pb2_grpc,
    )
    from apache_beam.runners.worker import worker_pool_main
    from apache_beam.transforms.fully_qualified_named_transform import (
        FullyQualifiedNamedTransform,
    )
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from crossinfer import _callables, _inspect, _repository
    from crossinfer._errors import ConfigurationError
    from expansion_service import _artifacts, _guard, _isolation, _options, _servicer

    try:
        # An empty list admits no user callable at all; a glob that admits everything is refused.
        _callables.set_allowlist(list(config.allow))
    except ConfigurationError as e:
        print(f"crossinfer-expansion-service: --allow: {e}", file=sys.stderr)
        return 2
    repository = _repository.Repository(config.model_roots, config.trusted_model_roots)
    _repository.set_repository(repository)
    inspectors = _isolation.InspectorPool(
        _isolation.Policy(allow=tuple(config.allow), model_roots=config.model_roots,
                          trusted_model_roots=config.trusted_model_roots),
        _isolation.Limits(timeout=config.inspect_timeout, cpu_seconds=config.inspect_cpu_seconds,
                          memory_mb=config.inspect_memory_mb),
        size=config.inspectors)
    _inspect.set_runner(inspectors)
    _warm_up()

    # grpc's default SO_REUSEPORT would let a second service share a fixed port silently.
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="expansion-rpc"),
        options=[("grpc.so_reuseport", 0)])
    try:
        port = server.add_insecure_port(_hostport(config.host, config.port))
    except RuntimeError:
        port = 0
    if not port:
        print(f"crossinfer-expansion-service: cannot listen on "
              f"{_hostport(config.host, config.port)}", file=sys.stderr)
        return 1
    address = _hostport(config.host, port)

    loopback = None if config.container_image else _loopback_target(config.host, port)
    options = _options.service_options(
        loopback_address=loopback, container_image=config.container_image)
    pickler.set_library(options.view_as(SetupOptions).pickle_library)
    # loopback_address=None: Beam would otherwise offer AnyOf(DOCKER, EXTERNAL), and the DOCKER
    # alternative cannot run here. The EXTERNAL loopback is the service's only environment.
    expansion = _servicer.GuardedExpansionServicer(options)
    beam_expansion_api_pb2_grpc.add_ExpansionServiceServicer_to_server(expansion, server)
    beam_artifact_api_pb2_grpc.add_ArtifactRetrievalServiceServicer_to_server(
        _artifacts.OwnArtifactsRetrievalService(expansion.environment_artifacts()),
        server)
    if loopback:
        beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(
            worker_pool_main.BeamFnExternalWorkerPoolServicer(), server)
        if not _is_loopback(config.host):
            _LOGGER.warning(
                "serving the local worker pool on %s: it runs whatever pipeline code a caller "
                "sends it. Bind a non-loopback address only on a trusted network, or use "
                "--sdk-container-image.", address)

    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    expansion_name = beam_expansion_api_pb2.DESCRIPTOR.services_by_name[
        "ExpansionService"].full_name
    for name in ("", expansion_name):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    # Beam's own second layer: its FullyQualifiedNamedTransform resolves this one name only.
    with FullyQualifiedNamedTransform.with_filter(_guard.SERVED_CONSTRUCTOR):
        server.start()
        environment = (f"DOCKER {config.container_image}" if config.container_image
                       else f"EXTERNAL {loopback} (worker pool in this process)")
        _LOGGER.info(
            "ready in %.1f s; environment %s; allowed callables: %s; model roots: %s",
            time.perf_counter() - started, environment, list(config.allow) or "none",
            repository.describe() or "none (every model is refused)")
        print(f"crossinfer expansion service listening on {address}", flush=True)
        while not stop.wait(0.5):
            pass
        _LOGGER.info("shutting down")
        health_servicer.enter_graceful_shutdown()
        inspectors.close()
        server.stop(_SHUTDOWN_GRACE_SECS).wait(_SHUTDOWN_GRACE_SECS + 0.5)
    _exit(0)


def _warm_up() -> None:
    # Import what the first expansion needs now, so it does not pay seconds of imports.
    try:
        crossinfer = importlib.import_module("crossinfer")
    except ImportError as e:
        _LOGGER.warning("crossinfer does not import (%s): every expansion will fail", e)
        return
    if not hasattr(crossinfer, "Inference"):
        _LOGGER.warning("crossinfer has no Inference: every expansion will fail")
    with contextlib.suppress(ImportError):
        importlib.import_module("apache_beam.ml.inference.base")


def _exit(code: int) -> None:
    # Beam's servers stop listening on stop() but non-daemon threads (gRPC pools, SDK harness
    # channels of the loopback worker) keep the interpreter alive; exit for real.
    logging.shutdown()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)
