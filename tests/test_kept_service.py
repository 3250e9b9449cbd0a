"""A kept service (``--idle-exit``, ``--state-file``): it says where it listens, stays while it
is used, exits cleanly once unused, and refuses what arrives after it decided to exit."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
import types
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from expansion_service import _kept
from tests._service_helpers import Service

pytestmark = pytest.mark.timeout(180)


def _check(channel: grpc.Channel) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), timeout=5).status


def test_a_kept_service_says_where_it_is_stays_while_used_and_exits_once_unused(tmp_path):
    state = tmp_path / "kept.json"
    svc = Service("--port", "0", "--idle-exit", "3", "--state-file", str(state),
                  log_path=tmp_path / "kept.log")
    try:
        info = json.loads(state.read_text())
        assert info["address"] == svc.address and info["pid"] == svc.proc.pid
        assert stat.S_IMODE(state.stat().st_mode) == 0o600
        # Used every half second for twice its idle time: it stays.
        with svc.channel() as channel:
            until = time.monotonic() + 6
            while time.monotonic() < until:
                assert _check(channel) == health_pb2.HealthCheckResponse.SERVING
                time.sleep(0.5)
        assert svc.proc.poll() is None, svc.log()
        # Unused: it exits by itself, cleanly, and removes its file.
        code = svc.proc.wait(15)
    finally:
        svc.stop()
    assert code == 0, svc.log()
    assert not state.exists()
    assert "unused for 3 s: exiting" in svc.log()


def test_a_state_file_that_names_another_process_is_left_alone(tmp_path):
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"address": "127.0.0.1:1", "pid": os.getpid() + 1}))
    _kept.remove_state(str(path))
    assert path.exists()
    _kept.write_state(str(path), "127.0.0.1:2", "1.0")
    assert json.loads(path.read_text())["pid"] == os.getpid()
    _kept.remove_state(str(path))
    assert not path.exists()


def _server(activity: _kept.Activity) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=[activity])
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def test_an_rpc_after_the_decision_to_exit_is_refused_and_a_running_job_keeps_it(
        tmp_path, monkeypatch):
    # The idle clock is the test's: behaviour at each instant, not a sleep racing a window.
    now = [1000.0]
    monkeypatch.setattr(_kept, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    job = threading.Event()
    activity = _kept.Activity(0.5, busy=job.is_set)
    server, port = _server(activity)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert _check(channel) == health_pb2.HealthCheckResponse.SERVING
            assert not activity.should_stop()  # just used
            now[0] += 0.4
            assert not activity.should_stop()  # within the idle time
            job.set()  # a worker runs a job: no RPC comes, and it must stay
            now[0] += 10.0
            assert not activity.should_stop()
            job.clear()
            assert activity.should_stop()  # idle for longer than its idle time, no job
            with pytest.raises(grpc.RpcError) as refused:
                _check(channel)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "stopping" in refused.value.details()
    finally:
        server.stop(0)
