"""Beam's ExpansionServiceServicer behind the request guard, with readable errors and a log line."""

from __future__ import annotations

import logging
import re
import time

from apache_beam.portability.api import beam_expansion_api_pb2
from apache_beam.runners.portability.expansion_service import ExpansionServiceServicer
from apache_beam.transforms import environments

from crossinfer import _policy
from crossinfer._sandbox import pool as _isolation
from crossinfer._sandbox.fair import FairSlots
from expansion_service import _access, _guard, _limits, _registry

_LOGGER = logging.getLogger("expansion_service")

_PER_CLIENT = 16  # expansions of one client at once
_QUEUED_PER_CLIENT = 16  # and waiting for their turn (each holds an RPC thread)
_WAIT_FOR_TURN = 30.0

_TRACEBACK_HEADER = "Traceback (most recent call last):\n"
_EXCEPTION_LINE = re.compile(r"^(?P<type>[A-Za-z_][\w.]*)(?::\s?(?P<message>.*))?$", re.S)


class GuardedExpansionServicer(ExpansionServiceServicer):
    """Expands crossinfer.Inference with Beam's own machinery, after the guard has passed it.

    Every request is built under the service's ``policy`` (allowlist, model repository,
    inspectors). At most ``concurrency`` expansions run at once, ``_PER_CLIENT`` of one client
    (its identity from ``_access``, which outlives its connections); the others wait their turn,
    round-robin across clients. A client's queue is short, so one client's flood holds few RPC
    threads (the rest stay free for other clients and health checks): past it, or after
    ``_WAIT_FOR_TURN`` s, a request gets RESOURCE_EXHAUSTED. Beam's schema registry is swept
    behind the expansions.
    """

    def __init__(self, options, policy: _policy.Policy, concurrency: int = 32) -> None:
        super().__init__(options)
        self._policy = policy
        # The environment Beam's servicer gives expanded transforms: without a loopback
        # address it is exactly this (Beam keeps its own copy in a private attribute).
        self._environment = environments.Environment.from_options(options)
        self._slots = FairSlots(concurrency, min(_PER_CLIENT, concurrency), _QUEUED_PER_CLIENT)
        self._janitor = _registry.SchemaJanitor()

    def environment_artifacts(self) -> list:
        """The dependencies of the environment expanded transforms get (for artifact serving)."""
        return list(self._environment.artifacts())

    def Expand(self, request, context=None):
        # Who asks: the identity the access check admitted (it outlives the connection).
        client = _access.current_client() or (context.peer() if context is not None else "?")
        if not self._slots.acquire(client, _WAIT_FOR_TURN):
            message = ("the expansion service is busy (this client has too many expansions "
                       "running and waiting); retry")
            if context is not None:
                import grpc

                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
            return beam_expansion_api_pb2.ExpansionResponse(error=message)
        _isolation.set_client(client)
        try:
            with self._janitor.expansion():
                response = self._expand(request, context)
        finally:
            self._slots.release(client)
        if _isolation.refused_busy() and context is not None:
            import grpc

            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          "the expansion service is inspecting as many models for this client "
                          "as it takes at once; retry later")
        return response

    def _expand(self, request, context):
        started = time.perf_counter()
        constructor = "?"
        try:
            inspected = _guard.inspect(request, self._janitor.schema_id)
        except _guard.Rejected as e:
            response = beam_expansion_api_pb2.ExpansionResponse(
                error=_limits.clip(f"Rejected by the crossinfer expansion service: {e}"))
            outcome = "rejected"
        except Exception as e:  # noqa: BLE001 - a bug in inspection must fail closed
            _LOGGER.exception("request inspection failed")
            response = beam_expansion_api_pb2.ExpansionResponse(
                error=("Rejected by the crossinfer expansion service: the request could not be "
                       f"inspected ({type(e).__name__}: {_limits.clip(str(e), 500)})"))
            outcome = "rejected"
        else:
            constructor = inspected.constructor
            if inspected.dropped_options or inspected.dropped_output_coders:
                _LOGGER.debug("ignored client pipeline options %s and output coder requests %s",
                              inspected.dropped_options, inspected.dropped_output_coders)
            # Beam constructs the transform from the request by name: the policy reaches its
            # construction through this request's context, never through a global.
            with _policy.applied(self._policy):
                response = super().Expand(inspected.request, context)
            if response.error and _isolation.refused_busy():
                response.error, outcome = "busy", "busy"
            elif response.error:
                response.error, outcome = explain(response.error)
                response.error = _limits.clip(response.error)
            else:
                outcome = "ok"
        _LOGGER.info(
            "expansion transform=%s constructor=%s outcome=%s ms=%d",
            _limits.shown(repr(request.transform.unique_name)), _limits.shown(repr(constructor)),
            outcome,
            round((time.perf_counter() - started) * 1000))
        return response


def explain(error: str) -> tuple[str, str]:
    """Put the exception's type and message first; return (error text, outcome for the log).

    Beam reports an expansion failure as the whole traceback. crossinfer's own errors are
    configuration mistakes, so their message alone is the answer; anything else is logged whole
    and the client gets its first line.
    """
    section = error.rsplit(_TRACEBACK_HEADER, 1)[-1]
    # Frame lines are indented; the exception starts at the first line that is not.
    lines = section.splitlines()
    start = next((i for i, line in enumerate(lines) if line and not line.startswith(" ")), None)
    if start is None:
        return error, "error"
    match = _EXCEPTION_LINE.match("\n".join(lines[start:]).strip())
    if match is None:
        return error, "error"
    qualified = match.group("type")
    short = qualified.rsplit(".", 1)[-1]
    message = (match.group("message") or "").strip()
    headline = f"{short}: {message}" if message else short
    if qualified.startswith("crossinfer."):
        return headline, short
    # Anything else is logged whole; the client gets the first line only, never the traceback
    # (it names the service's files and code).
    _LOGGER.warning("expansion failed:\n%s", _limits.clip(error, 8000))
    first = headline.splitlines()[0] if headline else short
    if len(first) > 500:
        first = first[:497] + "..."
    return f"{first} (the service log has the details)", short
