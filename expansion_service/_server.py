"""gRPC wiring: expansion, artifacts, health and (locally) a worker pool; signals; exit."""

from __future__ import annotations

import contextlib
import errno
import importlib
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
_EXPANSIONS = 32  # expansions at once


@dataclass(frozen=True)
class ServiceConfig:
    """What the command line asked for."""

    host: str
    port: int
    allow: tuple[str, ...] = ()
    container_image: Optional[str] = None
    model_roots: tuple[str, ...] = ()
    trusted_model_roots: tuple[str, ...] = ()
    inspect_timeout: float = 120.0  # a backstop; CPU seconds are the real bound
    inspect_cpu_seconds: int = 30
    inspect_memory_mb: int = 2048
    inspectors: int = 2
    idle_exit: float = 0.0  # seconds unused before the service exits; 0: never
    state_file: Optional[str] = None  # where a kept service says where it listens
    token_file: Optional[str] = None  # serve only these tokens' holders
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    any_client: bool = False  # serve anyone who connects (behind an authenticating proxy)
    allow_weak_sandbox: bool = False  # inspect even where a fence cannot be set up


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
    from apache_beam.transforms.fully_qualified_named_transform import (
        FullyQualifiedNamedTransform,
    )
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from crossinfer import _beam, _callables, _policy, _repository
    from crossinfer._sandbox import pool as _isolation
    from crossinfer._sandbox.settings import Confinement, Limits
    from crossinfer._errors import ConfigurationError
    from expansion_service import (
        _access, _artifacts, _guard, _kept, _options, _registry, _servicer, _workers)

    try:
        _beam.check_service()  # the Beam internals it relies on were read from these releases
    except RuntimeError as e:
        print(f"crossinfer-expansion-service: {e}", file=sys.stderr)
        return 2

    try:
        # An empty list admits no user callable at all; a glob that admits everything is refused.
        _callables.check_allowlist(config.allow)
    except ConfigurationError as e:
        print(f"crossinfer-expansion-service: --allow: {e}", file=sys.stderr)
        return 2
    try:
        repository = _repository.Repository(config.model_roots, config.trusted_model_roots)
    except ValueError as e:
        print(f"crossinfer-expansion-service: --model-root: {e}", file=sys.stderr)
        return 2

    try:
        access = _access.Access(
            mode="token" if config.token_file else "anyone" if config.any_client else "owner",
            tokens=_access.read_tokens(config.token_file) if config.token_file else ())
        tls = _access.read_tls(config.tls_cert, config.tls_key) if config.tls_cert else None
    except (OSError, ValueError) as e:
        print(f"crossinfer-expansion-service: {e}", file=sys.stderr)
        return 2
    if access.mode == "owner" and not _access.socket_table_readable():
        # The owner check would refuse every caller: say so now, with the way out.
        print("crossinfer-expansion-service: cannot read the kernel's socket table "
              "(/proc/net/tcp), so callers cannot be told apart; give --auth-token-file "
              "(or --allow-any-client behind a proxy that authenticates)", file=sys.stderr)
        return 2

    if not _port_free(config.host, config.port):  # said before seconds of imports
        print(f"crossinfer-expansion-service: cannot listen on "
              f"{_hostport(config.host, config.port)}: in use", file=sys.stderr)
        return 1
    # Imports what the first expansion needs, and what the inspectors' zygote needs: it is
    # forked from this process next, before gRPC (or anything) starts a thread, so one import
    # serves both.
    _warm_up()
    # Inspectors get the roots as the descriptors opened above, and cannot see the pool's
    # directory (nor, without gs:// roots, any network).
    try:
        inspectors = _isolation.InspectorPool(
            Confinement(allow=tuple(config.allow), model_roots=config.model_roots,
                        trusted_model_roots=config.trusted_model_roots,
                        held=tuple(repository.held()),
                        hidden=(),
                        network=any(r.scheme for r in repository.roots),
                        weak=config.allow_weak_sandbox),
            Limits(timeout=config.inspect_timeout, cpu_seconds=config.inspect_cpu_seconds,
                   memory_mb=config.inspect_memory_mb),
            size=config.inspectors, digest=_isolation.content_digest(repository), fork=True,
            model_bytes=_isolation.model_bytes(repository))  # limits grow with the model
    except ConfigurationError as e:  # a fence the kernel refuses (and no --allow-weak-sandbox)
        print(f"crossinfer-expansion-service: {e}", file=sys.stderr)
        return 2
    credentials = _access.server_credentials(tls) if tls is not None else None  # threads now
    # grpc's default SO_REUSEPORT would let a second service share a fixed port silently.
    # Expansions take at most _EXPANSIONS threads; the rest stay free for health and artifacts.
    from expansion_service._limits import MAX_REQUEST_BYTES

    workers = None if config.container_image else _workers.GuardedWorkerPool()
    # A kept service (started by one JVM, used by the next) exits once unused.
    activity = _kept.Activity(config.idle_exit, busy=lambda: bool(
        workers and workers.running())) if config.idle_exit > 0 else None
    # Who may call comes first: a refused call is not activity, and does no work.
    interceptors = [access] + ([activity] if activity else [])

    server = grpc.server(
        # Expansions, one client's queue of them, and threads that stay free for health.
        futures.ThreadPoolExecutor(max_workers=_EXPANSIONS + 32,
                                   thread_name_prefix="expansion-rpc"),
        interceptors=interceptors,
        options=[("grpc.so_reuseport", 0),
                 ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
                 ("grpc.max_send_message_length", 64 * 1024 * 1024)])
    try:
        port = (server.add_secure_port(_hostport(config.host, config.port), credentials)
                if credentials is not None
                else server.add_insecure_port(_hostport(config.host, config.port)))
    except RuntimeError:
        port = 0
    if not port:
        inspectors.close()
        print(f"crossinfer-expansion-service: cannot listen on "
              f"{_hostport(config.host, config.port)}", file=sys.stderr)
        return 1
    address = _hostport(config.host, port)
    access.ports.add(port)

    # The service's whole policy, one value handed to every expansion (never set globally).
    policy = _policy.Policy(allowlist=tuple(config.allow), repository=repository,
                            runner=inspectors)
    # The in-process workers resolve nothing against a directory that holds files.
    os.chdir(inspectors.workdir)
    # The worker pool (local runs) listens on loopback TCP, which every runner can dial (a
    # Flink job server cannot dial a Unix socket), on a port of its own, and serves only
    # this user's processes (the uid of the caller's socket): the job server that runs the
    # pipeline is one; any other local user, or a model inspector (no network), is not.
    pool_server = loopback = None
    if not config.container_image:
        pool_access = _access.Access(mode="owner", by_process=False)
        pool_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="worker-pool"),
            interceptors=[pool_access] + ([activity] if activity else []),
            options=[("grpc.max_receive_message_length", 1024 * 1024),
                     ("grpc.so_reuseport", 0)])
        beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(
            workers, pool_server)
        pool_port = pool_server.add_insecure_port("127.0.0.1:0")
        if not pool_port:
            inspectors.close()
            print("crossinfer-expansion-service: cannot listen for the worker pool on "
                  "loopback", file=sys.stderr)
            return 1
        pool_access.ports.add(pool_port)
        loopback = f"127.0.0.1:{pool_port}"
    options = _options.service_options(
        loopback_address=loopback, container_image=config.container_image)
    pickler.set_library(options.view_as(SetupOptions).pickle_library)
    # loopback_address=None: Beam would otherwise offer AnyOf(DOCKER, EXTERNAL), and the DOCKER
    # alternative cannot run here. The EXTERNAL loopback is the service's only environment.
    expansion = _servicer.GuardedExpansionServicer(options, policy, concurrency=_EXPANSIONS)
    beam_expansion_api_pb2_grpc.add_ExpansionServiceServicer_to_server(expansion, server)
    beam_artifact_api_pb2_grpc.add_ArtifactRetrievalServiceServicer_to_server(
        _artifacts.OwnArtifactsRetrievalService(expansion.environment_artifacts()),
        server)

    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    expansion_name = beam_expansion_api_pb2.DESCRIPTOR.services_by_name[
        "ExpansionService"].full_name
    for name in ("", expansion_name):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    # Beam's own second layer: its FullyQualifiedNamedTransform resolves these names only.
    with FullyQualifiedNamedTransform.with_filter(_guard.SERVED_GLOB):
        _registry.settle()
        if pool_server is not None:
            pool_server.start()
        server.start()
        environment = (f"DOCKER {config.container_image}" if config.container_image
                       else f"EXTERNAL {loopback} (worker pool in this process)")
        _LOGGER.info(
            "ready in %.1f s; environment %s; allowed callables: %s; model roots: %s",
            time.perf_counter() - started, environment, list(config.allow) or "none",
            repository.describe() or "none (every model is refused)")
        if config.state_file:
            from crossinfer import _version

            _kept.write_state(config.state_file, address, _version.installed() or "")
            _LOGGER.info("kept: exits after %g s unused; where it listens is in %s",
                         config.idle_exit, config.state_file)
        print(f"crossinfer expansion service listening on {address}", flush=True)
        while not stop.wait(0.5):
            if activity is not None and activity.should_stop():
                _LOGGER.info("unused for %g s: exiting", config.idle_exit)
                break
        _kept.remove_state(config.state_file)
        _LOGGER.info("shutting down")
        health_servicer.enter_graceful_shutdown()
        inspectors.close()
        stopped = server.stop(_SHUTDOWN_GRACE_SECS)
        if pool_server is not None:
            pool_server.stop(0)
        stopped.wait(_SHUTDOWN_GRACE_SECS + 0.5)
    _exit(0)


def _port_free(host: str, port: int) -> bool:
    if port == 0:
        return True
    import socket

    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host, port))
    except OSError as e:
        return e.errno not in (errno.EADDRINUSE, errno.EACCES)
    return True


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
    # What Beam imports when the first transform is applied (IPython, to see if it runs in a
    # notebook): imported now, it is part of what _registry.settle() makes permanent. The
    # framework modules are not: a request imports the one it names (an ONNX import costs a
    # sklearn job 0.7 s of start), and the inspectors' zygote, forked next, imports the warm
    # ones on its own core while this process starts serving.
    from crossinfer import _inspect, frameworks  # noqa: F401 - imported to be warm

    with contextlib.suppress(Exception):
        from apache_beam.utils import interactive_utils

        interactive_utils.is_in_ipython()


def _exit(code: int) -> None:
    # Beam's servers stop listening on stop() but non-daemon threads (gRPC pools, SDK harness
    # channels of the loopback worker) keep the interpreter alive; exit for real.
    logging.shutdown()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)
