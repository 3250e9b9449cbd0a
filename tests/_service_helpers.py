"""Start the real expansion service as a process and build expansion requests for it."""

from __future__ import annotations

import os
import pickle
import re
import select
import signal
import subprocess
import sys
import time
import typing
from pathlib import Path
from typing import Any, Optional, Sequence

import grpc

REPO = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"crossinfer expansion service listening on (\S+)")
FQN_URN = "beam:transforms:python:fully_qualified_named"


def _group_of(user: Optional[str]) -> Optional[int]:
    if user is None:
        return None
    import pwd

    return pwd.getpwnam(user).pw_gid


class Service:
    """One ``python -m expansion_service`` process; its log (stderr) goes to a file."""

    def __init__(self, *args: str, log_path: Path, env: Optional[dict] = None,
                 timeout: float = 90.0, user: Optional[str] = None) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "expansion_service", *args],
            stdout=subprocess.PIPE, stderr=self._log, cwd=str(log_path.parent),
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            user=user, group=_group_of(user), extra_groups=[] if user else None)
        self.address = self._wait_for_address(timeout)
        self.port = int(self.address.rsplit(":", 1)[1])

    def _wait_for_address(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        out = b""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}:\n{self.log()}")
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                out += chunk
                match = LISTENING.search(out.decode(errors="replace"))
                if match:
                    return match.group(1)
        self.proc.kill()
        raise RuntimeError(f"service did not print its address in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(f"127.0.0.1:{self.port}")

    def expand(self, request, timeout: float = 120.0):
        from apache_beam.portability.api import beam_expansion_api_pb2_grpc

        with self.channel() as channel:
            stub = beam_expansion_api_pb2_grpc.ExpansionServiceStub(channel)
            return stub.Expand(request, timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> tuple[int, float]:
        """Send ``sig``; return (exit code, seconds until exit)."""
        if self.proc.poll() is not None:
            return self.proc.returncode, 0.0
        sent = time.monotonic()
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._log.close()
        self.proc.stdout.close()
        return code, time.monotonic() - sent


# --- payloads and requests, built with Beam's own pieces ----------------------------------

def fqn_payload(constructor: str, args: Sequence[Any] = (), /, **kwargs: Any) -> bytes:
    """The ExternalConfigurationPayload a Python client sends for constructor(*args, **kwargs)."""
    from apache_beam.transforms.fully_qualified_named_transform import (
        FullyQualifiedNamedTransform,
    )

    _, payload = FullyQualifiedNamedTransform(
        constructor, tuple(args), kwargs).to_runner_api_parameter(None)
    return payload.SerializeToString()


# Functional form: with postponed annotations Beam would see strings and type the fields Any.
InputRow = typing.NamedTuple("InputRow", [("id", int), ("features", typing.List[float])])


def expansion_request(payload: bytes, *, unique_name: str = "Inference",
                      pipeline_options: Optional[dict] = None,
                      urn: str = FQN_URN):
    """An ExpansionRequest like a client's: one input PCollection of InputRow rows."""
    from apache_beam.coders import RowCoder
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.portability import common_urns
    from apache_beam.portability.api import beam_expansion_api_pb2, beam_runner_api_pb2
    from apache_beam.runners.pipeline_context import PipelineContext
    from apache_beam.transforms.core import Windowing
    from apache_beam.transforms.window import GlobalWindows
    from apache_beam.typehints.schemas import named_tuple_to_schema

    context = PipelineContext()
    coder_id = context.coders.get_id(RowCoder(named_tuple_to_schema(InputRow)))
    windowing_id = context.windowing_strategies.get_id(Windowing(GlobalWindows()))
    components = context.to_runner_api()
    components.pcollections["input_pc"].CopyFrom(beam_runner_api_pb2.PCollection(
        unique_name="input_pc", coder_id=coder_id, windowing_strategy_id=windowing_id,
        is_bounded=beam_runner_api_pb2.IsBounded.BOUNDED))
    components.transforms["impulse_input"].CopyFrom(beam_runner_api_pb2.PTransform(
        unique_name="impulse_input",
        spec=beam_runner_api_pb2.FunctionSpec(urn=common_urns.primitives.IMPULSE.urn),
        outputs={"out": "input_pc"}))
    request = beam_expansion_api_pb2.ExpansionRequest(
        components=components,
        transform=beam_runner_api_pb2.PTransform(
            unique_name=unique_name,
            spec=beam_runner_api_pb2.FunctionSpec(urn=urn, payload=payload),
            inputs={"input": "input_pc"}),
        namespace="test")
    if pipeline_options:
        request.pipeline_options.CopyFrom(
            PipelineOptions(flags=[], **pipeline_options).to_runner_api())
    return request


class FileCreator:
    """Unpickling this creates ``path``: a stand-in for code a request smuggles in."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _armed(what):
    """``what``, or for a path the object whose unpickling creates it."""
    return FileCreator(what) if isinstance(what, (str, Path)) else what


def pickled_coder(path):
    """A ``beam:coder:pickled_python:v1`` coder, as Beam writes one, that creates ``path`` (or
    that unpickles the object ``path``)."""
    from apache_beam.coders.coders import serialize_coder
    from apache_beam.portability.api import beam_runner_api_pb2
    from google.protobuf import wrappers_pb2

    payload = wrappers_pb2.BytesValue(value=serialize_coder(_armed(path)))
    return beam_runner_api_pb2.Coder(spec=beam_runner_api_pb2.FunctionSpec(
        urn="beam:coder:pickled_python:v1", payload=payload.SerializeToString()))


def pickled_window_fn(path):
    """A ``beam:window_fn:pickled_python:v1`` spec, as Beam writes one, that creates ``path``
    (or that unpickles the object ``path``)."""
    from apache_beam.portability.api import beam_runner_api_pb2
    from google.protobuf import wrappers_pb2

    payload = wrappers_pb2.BytesValue(value=pickled_bytes(path))
    return beam_runner_api_pb2.FunctionSpec(
        urn="beam:window_fn:pickled_python:v1", payload=payload.SerializeToString())


def pickled_bytes(path) -> bytes:
    """Beam's pickler output (what ``pickler.loads`` reads) that creates ``path`` (or that
    unpickles the object ``path``)."""
    from apache_beam.internal import pickler

    return pickler.dumps(_armed(path))


def expand_with_stock_beam(request) -> None:
    """Hand ``request`` to Beam's own ExpansionServiceServicer, here in the test process.

    Used to show a hostile request is armed: stock Beam runs its code while decoding it.
    """
    from apache_beam.runners.portability.expansion_service import ExpansionServiceServicer

    ExpansionServiceServicer().Expand(request)


def write_sklearn_model(path: Path, n_features: int = 4) -> Path:
    """Pickle a tiny two-class LogisticRegression to ``path``."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, n_features))
    y = (x[:, 0] > 0).astype(int)
    with open(path, "wb") as f:
        pickle.dump(LogisticRegression().fit(x, y), f)
    return path
