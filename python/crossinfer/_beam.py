"""Every private Apache Beam name crossinfer relies on, in one place, and the Beam versions
they were read from.

Each function below reaches one name Beam does not publish, says what it relies on and why no
public hook serves. Nothing else in crossinfer or the expansion service touches a private Beam
name (tests/test_beam.py checks the sources). A Beam release may rename any of them, so the
Beam version is checked where it matters:

- the expansion service refuses to start on a Beam outside ``SUPPORTED`` (``check_service``):
  its request isolation (the registry sweep, the worker pool) depends on these internals, and a
  security boundary must not degrade silently;
- ``Inference`` warns once (``check_library``): in a Python pipeline the only internal used is
  the custom-handler unwrapping below, which degrades to a plain check.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Optional

_LOG = logging.getLogger(__name__)

# The Beam releases whose sources these functions were checked against (the project pins one).
SUPPORTED = ("2.77.",)

# The private names used below, as ``owner.name`` (tests/test_beam.py finds no other use).
PRIVATE_NAMES = (
    "GrpcServer._DEFAULT_SHUTDOWN_TIMEOUT_SECS",
    "CoderRegistry._coders",
    "BeamFnExternalWorkerPoolServicer._worker_threads",
    "_PreProcessingModelHandler._base",
)

_warned: list[str] = []


def version() -> str:
    """The installed Beam's version."""
    import apache_beam

    return str(getattr(apache_beam, "__version__", "unknown"))


def unsupported() -> Optional[str]:
    """Why the installed Beam is not one these internals were checked on, or None."""
    installed = version()
    if installed.startswith(SUPPORTED):
        return None
    wanted = " or ".join(f"{v}x" for v in SUPPORTED)
    return (f"Apache Beam {installed} is installed, but crossinfer relies on Beam internals "
            f"checked on Beam {wanted} only (listed in crossinfer/_beam.py); install "
            "apache-beam==2.77.0 (pip install crossinfer installs it)")


def check_service() -> None:
    """At the expansion service's start: refuse an unsupported Beam (RuntimeError)."""
    problem = unsupported()
    if problem is not None:
        raise RuntimeError(problem)


def check_library() -> None:
    """At ``Inference``'s construction: warn once about an unsupported Beam."""
    problem = unsupported()
    if problem is not None and problem not in _warned:
        _warned.append(problem)
        _LOG.warning("crossinfer: %s", problem)


def set_job_server_grace(seconds: float) -> bool:
    """Set the shutdown grace of the gRPC servers Beam's Python job server starts per job;
    False if this Beam has no such setting.

    Relies on ``worker_handlers.GrpcServer._DEFAULT_SHUTDOWN_TIMEOUT_SECS`` (5 s in Beam 2.77),
    a class constant Beam reads when it stops a job's servers. No option or argument sets it,
    and Beam's ``local_job_service_main`` builds the servers itself.
    """
    from apache_beam.runners.portability.fn_api_runner import worker_handlers

    server = getattr(worker_handlers, "GrpcServer", None)
    if server is None or not hasattr(server, "_DEFAULT_SHUTDOWN_TIMEOUT_SECS"):
        return False
    server._DEFAULT_SHUTDOWN_TIMEOUT_SECS = seconds  # pylint: disable=protected-access
    return True


def forget_coders(classes: Iterable[type]) -> None:
    """Remove the coders registered for ``classes`` from Beam's process-wide coder registry.

    Relies on ``coders.registry._coders`` (type -> coder class) and the public list
    ``custom_types``. Beam registers a coder for each schema class it generates and offers
    ``register_coder`` but no removal, so a long-running service would keep one per request.
    """
    from apache_beam import coders

    gone = set(classes)
    registered = getattr(coders.registry, "_coders", None)
    if isinstance(registered, dict):
        for cls in gone:
            registered.pop(cls, None)
    custom = getattr(coders.registry, "custom_types", None)
    if isinstance(custom, list):
        custom[:] = [t for t in custom if t not in gone]


def worker_threads(pool: Any) -> dict:
    """The in-process workers Beam's ``BeamFnExternalWorkerPoolServicer`` keeps by worker id.

    Relies on its ``_worker_threads`` dict: Beam's own ``StopWorker`` stops the harnesses it
    finds there, so a pool that starts its workers itself (after its own checks) must record
    them in that very dict. Beam has no hook between the request and the harness's start.
    """
    return pool._worker_threads  # pylint: disable=protected-access


def wrapped_handler(handler: Any) -> Optional[Any]:
    """The model handler that Beam's ``with_preprocess_fn`` / ``with_postprocess_fn`` wrapper
    ``handler`` wraps, or None for an unwrapped handler.

    Relies on the wrappers' ``_base`` attribute. They expose no accessor, and which handler is
    inside decides how a custom handler's inputs are converted (tensors for PyTorch's).
    """
    return getattr(handler, "_base", None)


def short_id_cache_class() -> Optional[type]:
    """Beam's per-process cache of metric short ids (``sdk_worker.ShortIdCache``), or None on
    a Beam without it. Not published: the SDK harness numbers ids per process, and Prism keeps
    one map per job (``expansion_service/_short_ids.py`` says why that matters); no public
    hook lets a process choose its ids."""
    from apache_beam.runners.worker import sdk_worker

    if not hasattr(sdk_worker, "SHORT_ID_CACHE"):
        return None
    return getattr(sdk_worker, "ShortIdCache", None)


def replace_short_id_cache(make: Any) -> Any:
    """Sets this process's short-id cache to ``make(current)`` unless ``make`` returns the
    current one; returns the cache in force. Beam's harness reads the module global at each
    report, so replacing it is enough."""
    from apache_beam.runners.worker import sdk_worker

    cache = make(sdk_worker.SHORT_ID_CACHE)
    sdk_worker.SHORT_ID_CACHE = cache
    return cache
