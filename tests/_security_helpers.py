"""Shared by the security tests: a service with model roots, requests, and hostile models."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests._service_helpers import Service, expansion_request, fqn_payload


def start(place: Path, *extra: str, log: str = "service.log", roots: bool = True,
          env: Optional[dict] = None, user: Optional[str] = None) -> Service:
    """The service with ``place/roots/data`` (untrusted) and ``place/roots/trusted``."""
    args = ["--port", "0", "--inspect-timeout", "8", "--inspect-cpu-seconds", "6",
            "--inspect-memory-mb", "1024"]
    if roots:
        args += ["--model-root", str(place / "roots" / "data"),
                 "--trusted-model-root", str(place / "roots" / "trusted")]
    if user is not None:
        # The test (root) is not the service's user, whom alone the owner check serves: these
        # tests are about the sandbox; who may connect is tests/test_service_access.py's.
        args.append("--allow-any-client")
    return Service(*args, *extra, log_path=place / log, env=env, user=user)


@pytest.fixture(scope="module")
def service(place):
    """The service of the test module's ``place``."""
    svc = start(place)
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def channel(service):
    with service.channel() as ch:
        yield ch


def make_place(path: Path) -> Path:
    for d in ("roots/data", "roots/trusted", "outside", "markers"):
        (path / d).mkdir(parents=True, exist_ok=True)
    return path


def client(service):
    """A channel with its own connection, as another client process would have (grpc shares
    one connection between the channels of a process to the same address by default)."""
    import grpc

    return grpc.insecure_channel(f"127.0.0.1:{service.port}",
                                 options=[("grpc.use_local_subchannel_pool", 1)])


def expand(channel, request, timeout: float = 60):
    from apache_beam.portability.api import beam_expansion_api_pb2_grpc

    return beam_expansion_api_pb2_grpc.ExpansionServiceStub(channel).Expand(
        request, timeout=timeout)


def inference(**kwargs) -> bytes:
    base = dict(framework="sklearn", feature_field="features", passthrough_fields=["id"])
    base.update(kwargs)
    return fqn_payload("crossinfer.Inference", **{k: v for k, v in base.items() if v is not None})


def request(**kwargs):
    return expansion_request(inference(**kwargs))


def refused(response, *says: str) -> str:
    error = response.error
    assert error, "the request should have been refused"
    assert not response.transform.spec.urn
    assert "Traceback" not in error and "File \"/" not in error
    for word in says:
        assert word in error, error
    return error


def healthy(channel) -> bool:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def p95(values: list) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def small_onnx(path: Path, width: int = 4, doc: str = "") -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0, axes=[1])], "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])], doc_string=doc)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), str(path))
    return path


def looping_onnx(path: Path, doc: str = "") -> Path:
    """An ONNX graph whose Loop runs 2^62 times: only the inspection's limits end it (``doc``
    makes its bytes differ)."""
    import onnx
    from onnx import TensorProto, helper

    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["acc_in", "one"], ["acc_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, ["batch", 4])],
        initializer=[helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["n", "c", "x"], ["y"], body=body)], "loop",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[helper.make_tensor("n", TensorProto.INT64, [], [1 << 62]),
                     helper.make_tensor("c", TensorProto.BOOL, [], [True])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                                doc_string=doc), str(path))
    return path


def code_pickle(path: Path, source: str) -> Path:
    """A pickle whose loading runs ``source`` (exec) and then yields a real estimator."""
    import pickle

    from tests._service_helpers import write_sklearn_model

    model = path.with_suffix(".real.pkl")
    write_sklearn_model(model)

    # exec(source); then the estimator: pickle.load(open(model, "rb")) is the file's object.
    payload = (
        b"c__builtin__\nexec\n(" + pickle.dumps(source)[2:-1] + b"tR"
        b"0cpickle\nload\n(cbuiltins\nopen\n(" + pickle.dumps(str(model))[2:-1]
        + pickle.dumps("rb")[2:-1] + b"tRtR.")
    path.write_bytes(payload)
    return path


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_until(check, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def log_size(path: Path) -> int:
    return os.path.getsize(path)
