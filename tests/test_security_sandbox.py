"""Code in an inspector stays there: a trusted pickle (code runs there by design) tries to
outlive the inspection, lift its limits, reach the worker pool or the service's port, forge
service log lines, and change what later requests from other clients get."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2

from tests._security_helpers import (  # noqa: F401 - service, channel: fixtures
    channel, service,
    alive, code_pickle, expand, healthy, make_place, request, small_onnx, start, wait_until)
from tests._service_helpers import write_sklearn_model

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> Path:
    path = make_place(tmp_path_factory.mktemp("sandbox"))
    write_sklearn_model(path / "roots" / "trusted" / "model.pkl")
    small_onnx(path / "roots" / "data" / "small.onnx")
    return path


def _pool_path(channel, place) -> str:
    response = expand(channel, request(model_uri=str(place / "roots/trusted/model.pkl")))
    for env in response.components.environments.values():
        if env.urn == common_urns.environments.EXTERNAL.urn:
            return beam_runner_api_pb2.ExternalPayload.FromString(env.payload).endpoint.url
    raise AssertionError("no EXTERNAL environment")


_ESCAPE = """
import json, os, resource, socket, sys, time
out = {{}}
# A grandchild that leaves the inspector's session, and a child that stays in it.
pid = os.fork()
if pid == 0:
    os.setsid()
    if os.fork() == 0:
        open({escaped!r}, "w").write(str(os.getpid()))
        time.sleep(600)
    os._exit(0)
os.waitpid(pid, 0)
if os.fork() == 0:
    open({stayed!r}, "w").write(str(os.getpid()))
    time.sleep(600)
    os._exit(0)
try:
    resource.setrlimit(resource.RLIMIT_CPU, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    out["cpu"] = "raised"
except (ValueError, OSError):
    out["cpu"] = "refused"
s = socket.socket()  # the worker pool listens on loopback TCP
s.settimeout(2)
try:
    s.connect(({pool!r}.rsplit(":", 1)[0], int({pool!r}.rsplit(":", 1)[1])))
    out["pool"] = "connected"
except OSError as e:
    out["pool"] = type(e).__name__
t = socket.socket()
t.settimeout(2)
try:
    t.connect(("127.0.0.1", {port}))
    out["tcp"] = "connected"
except OSError as e:
    out["tcp"] = type(e).__name__
out["cwd"] = os.listdir(".")
s.close()
t.close()
# What this process holds open of the service's: no socket of it (its port, its control line).
out["sockets"] = []
for fd in os.listdir("/proc/self/fd"):
    try:
        if os.readlink("/proc/self/fd/" + fd).startswith("socket:"):
            out["sockets"].append(fd)
    except OSError:  # the listing's own descriptor, closed by now
        pass
sys.stderr.write("2026-01-01 00:00:00,000 INFO expansion_service: FORGED service line\\n")
print("FORGED on stdout")
open({result!r}, "w").write(json.dumps(out))
"""


def test_code_in_an_inspector_stays_there(channel, service, place):
    files = {k: place / "markers" / k for k in ("escaped", "stayed", "result")}
    pool = _pool_path(channel, place)
    model = code_pickle(place / "roots" / "trusted" / "escape.pkl", _ESCAPE.format(
        pool=pool, port=service.port, **{k: str(v) for k, v in files.items()}))
    response = expand(channel, request(model_uri=str(model)))
    assert response.error == "", response.error
    # The grandchild writes its pid on its own time; the others were written before the answer.
    assert wait_until(lambda: all(f.exists() and f.read_text() for f in files.values()), 10.0)
    out = json.loads(files["result"].read_text())
    print(f"\ninspector escape attempts: {out}")
    escaped, stayed = (int(files[k].read_text()) for k in ("escaped", "stayed"))
    # Nothing it started survives the inspection (checked at once: the answer came after).
    assert wait_until(lambda: not alive(escaped) and not alive(stayed), 5.0), \
        "a process started by the inspector outlived it"
    assert out["cpu"] == "refused"
    assert out["pool"] != "connected", "the inspector reached the worker pool"
    assert out["tcp"] != "connected", "the inspector reached the service's port"
    assert out["cwd"] == []
    assert out["sockets"] == [], "the inspector holds a socket of the service's"
    forged = [line for line in service.log().splitlines() if "FORGED" in line]
    assert forged and all(" said: " in line for line in forged), forged
    assert healthy(channel)


_HIJACK = """
import crossinfer.frameworks._onnx as _o, crossinfer._inspect as _i
def _hijacked(*a, **k):
    open({copied!r}, "a").write("a later request\\n")
    raise RuntimeError("HIJACKED")
_o.describe = _hijacked
_i.describe_kwargs = _hijacked
"""


def test_a_later_client_is_unaffected(service, place):
    copied = place / "markers" / "copied"
    model = code_pickle(place / "roots" / "trusted" / "hijack.pkl",
                        _HIJACK.format(copied=str(copied)))
    with service.channel() as first:
        assert expand(first, request(model_uri=str(model))).error == ""
    with service.channel() as later:
        for i in range(4):
            response = expand(later, request(
                framework="onnx", model_uri=str(place / "roots/data/small.onnx"),
                postprocess="regression", min_batch_size=2 + i))
            assert response.error == "", response.error
    assert not copied.exists(), "code from an earlier inspection ran for a later request"


def test_sigterm_kills_what_inspectors_started(place):
    files = {k: place / "markers" / f"term-{k}" for k in ("escaped", "stayed", "result")}
    svc = start(place, log="sigterm.log")
    slow = code_pickle(place / "roots" / "trusted" / "slow.pkl", _ESCAPE.format(
        pool="127.0.0.1:1", port=1, **{k: str(v) for k, v in files.items()})
        + "\ntime.sleep(60)\n")
    import threading

    try:
        with svc.channel() as ch:
            errors = []
            thread = threading.Thread(target=lambda: errors.append(
                _expect_failure(ch, request(model_uri=str(slow)))), daemon=True)
            thread.start()
            assert wait_until(lambda: all(f.exists() and f.read_text() for f in files.values()),
                              90.0)
            escaped, stayed = (int(files[k].read_text()) for k in ("escaped", "stayed"))
            code, seconds = svc.stop(signal.SIGTERM)
            thread.join(10)
    finally:
        svc.stop(signal.SIGKILL)  # (a no-op once it has exited)
    assert code == 0 and seconds < 2.5, (code, seconds)
    assert errors == [True], "the expansion in flight must fail (the service stopped)"
    assert wait_until(lambda: not alive(escaped) and not alive(stayed), 5.0), \
        "a process started by an inspector outlived the service"


def _expect_failure(channel, req) -> bool:
    try:
        response = expand(channel, req, timeout=90)
    except Exception:  # noqa: BLE001 - the RPC dies with the service: what is expected
        return True
    return bool(response.error)


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(c) for c in found.stdout.split()]


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def test_the_zygote_is_a_fork_of_the_service_and_is_replaced_when_killed(place):
    """One import serves the service and its inspectors' zygote (forked from it at start);
    a zygote that dies is replaced by a fresh interpreter, inside the same fences."""
    svc = start(place, log="zygote.log")
    try:
        with svc.channel() as ch:
            model = str(place / "roots/trusted/model.pkl")
            assert expand(ch, request(model_uri=model)).error == ""
            (zygote,) = _children(svc.proc.pid)
            assert _cmdline(zygote) == _cmdline(svc.proc.pid), "not a fork of the service"
            os.kill(zygote, signal.SIGKILL)
            # The next inspection finds it gone and starts a replacement; until that is
            # ready, requests are answered with "try again", never with a wrong signature.
            answers = []

            def served() -> bool:
                error = expand(ch, request(model_uri=model, min_batch_size=len(answers) + 2)
                               ).error
                answers.append(error)
                return error == ""

            assert wait_until(served, 90.0), answers[-3:]
            assert all(a == "" or "try again" in a for a in answers), answers
            (replacement,) = [c for c in _children(svc.proc.pid) if c != zygote]
            assert "crossinfer._sandbox.inspector" in _cmdline(replacement)
            fences = [line for line in svc.log().splitlines()
                      if "model inspectors run with" in line]
            assert len(fences) == 1 and "network namespace yes" in fences[0], fences
            assert healthy(ch)
    finally:
        svc.stop()
