"""The service's worker pool takes the worker ids runners send, and uses them only as labels.

A real service process; the control plane the pool's worker dials is a real gRPC server here,
which records the ``worker_id`` header the harness sends.
"""

from __future__ import annotations

import threading
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from apache_beam.portability import common_urns
from apache_beam.portability.api import (
    beam_fn_api_pb2,
    beam_fn_api_pb2_grpc,
    beam_runner_api_pb2,
    endpoints_pb2,
)

from tests._service_helpers import Service, expansion_request, fqn_payload, write_sklearn_model

pytestmark = pytest.mark.timeout(240)

# What Prism sends (job, environment), and what Beam's Python job server sends.
RUNNER_IDS = ["job-001[go-job-1-1764733200000000000]_go", "worker_12", "1-1 [env: x/y] #3"]


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> str:
    place = tmp_path_factory.mktemp("pool")
    (place / "trusted").mkdir()
    model = write_sklearn_model(place / "trusted" / "model.pkl")
    svc = Service("--port", "0", "--trusted-model-root", str(place / "trusted"),
                  log_path=place / "service.log")
    try:
        response = svc.expand(expansion_request(fqn_payload(
            "crossinfer.Inference", framework="sklearn", model_uri=str(model),
            feature_field="features")))
        assert not response.error, response.error
        urls = [beam_runner_api_pb2.ExternalPayload.FromString(env.payload).endpoint.url
                for env in response.components.environments.values()
                if env.urn == common_urns.environments.EXTERNAL.urn]
        assert urls, "no EXTERNAL environment"
        yield urls[0]
    finally:
        svc.stop()


class _ControlPlane(beam_fn_api_pb2_grpc.BeamFnControlServicer):
    """Answers a harness's Control stream with no work, after noting who called."""

    def __init__(self) -> None:
        self.worker_ids: list[str] = []
        self.called = threading.Event()

    def Control(self, request_iterator, context):
        self.worker_ids += [v for k, v in context.invocation_metadata() if k == "worker_id"]
        self.called.set()
        return iter(())


@pytest.fixture
def control_plane():
    plane = _ControlPlane()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    beam_fn_api_pb2_grpc.add_BeamFnControlServicer_to_server(plane, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", plane
    server.stop(0)


def _start(pool_url: str, worker_id: str, control_url: str):
    with grpc.insecure_channel(pool_url) as channel:
        return beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolStub(channel).StartWorker(
            beam_fn_api_pb2.StartWorkerRequest(
                worker_id=worker_id,
                control_endpoint=endpoints_pb2.ApiServiceDescriptor(url=control_url)),
            timeout=30)


@pytest.mark.parametrize("worker_id", RUNNER_IDS)
def test_runner_worker_ids_start_a_worker_that_carries_them(pool, control_plane, worker_id):
    url, plane = control_plane
    reply = _start(pool, worker_id, url)
    assert reply.error == ""
    assert plane.called.wait(60), "the worker never dialled the control plane"
    assert plane.worker_ids == [worker_id]


@pytest.mark.parametrize("worker_id", [
    "", "x" * 257, "job\n001", "job-001\n", "a\x00b", "a\x1b[31m", "jöb-001", "a\tb"])
def test_unprintable_or_unbounded_worker_ids_are_refused(pool, control_plane, worker_id):
    url, plane = control_plane
    reply = _start(pool, worker_id, url)
    assert reply.error == "refused: the worker id must be 1-256 printable ASCII characters"
    assert not plane.called.wait(1)


def test_a_worker_id_is_never_used_as_a_path(pool, control_plane, tmp_path: Path):
    url, plane = control_plane
    target = tmp_path / "made"
    for worker_id in (f"../../{target}", f"{target}", f"$(touch {target})", f"`touch {target}`"):
        assert _start(pool, worker_id, url).error == ""
    assert plane.called.wait(60)
    assert not target.exists()
