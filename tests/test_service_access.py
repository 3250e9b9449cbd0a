"""Only its owner can use a service: another local user gets UNAUTHENTICATED on the service's
port and on its worker pool's; a standalone service with a token file and TLS serves only the
token's holders; a service that would be reachable from other machines without a check does
not start."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_expansion_api_pb2_grpc, beam_runner_api_pb2

from tests._security_helpers import expand, healthy, make_place, request
from tests._service_helpers import Service, write_sklearn_model

pytestmark = pytest.mark.timeout(300)

OTHER_USER = "crossinfer-other"
_HERE = Path(__file__).resolve().parent


def _other_user() -> str:
    """The second local user (made here when missing, as the setup script does)."""
    if os.geteuid() != 0:
        pytest.skip("probing as a second local user needs root")
    try:
        pwd.getpwnam(OTHER_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", OTHER_USER], check=True)
    return OTHER_USER


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> Path:
    path = make_place(tmp_path_factory.mktemp("access"))
    write_sklearn_model(path / "roots" / "trusted" / "model.pkl")
    return path


@pytest.fixture(scope="module")
def owned(place):
    svc = Service("--port", "0", "--trusted-model-root", str(place / "roots" / "trusted"),
                  log_path=place / "owned.log")
    yield svc
    svc.stop()


def _pool_url(channel, place) -> str:
    response = expand(channel, request(model_uri=str(place / "roots/trusted/model.pkl")))
    assert response.error == "", response.error
    for env in response.components.environments.values():
        if env.urn == common_urns.environments.EXTERNAL.urn:
            return beam_runner_api_pb2.ExternalPayload.FromString(env.payload).endpoint.url
    raise AssertionError("no EXTERNAL environment")


def _probe(user: str, service: str, pool: str) -> dict:
    done = subprocess.run([sys.executable, str(_HERE / "_other_user.py"), user, service, pool],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_another_local_user_gets_unauthenticated_everywhere(owned, place):
    user = _other_user()
    with owned.channel() as ch:
        pool = _pool_url(ch, place)
    # The worker pool is on loopback TCP: any runner (a Flink job server too) can dial it.
    host, port = pool.rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0, pool
    other = _probe(user, owned.address, pool)
    mine = _probe("root", owned.address, pool)
    print(f"\nsecond local user (uid {other['uid']}): {other}; the owner: {mine}")
    assert other == {"uid": pwd.getpwnam(user).pw_uid, "health": "UNAUTHENTICATED",
                     "expand": "UNAUTHENTICATED", "start_worker": "UNAUTHENTICATED"}
    # The owner's probe reaches the same methods (its StartWorker names a closed endpoint,
    # which the pool answers in its reply, not with an RPC error).
    assert mine == {"uid": 0, "health": "OK", "expand": "OK", "start_worker": "OK"}
    assert "UNAUTHENTICATED" not in owned.log()


def _self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    key.chmod(0o600)
    return cert, key


def test_a_token_and_tls_service_serves_only_the_tokens_holders(place):
    from expansion_service import connect

    cert, key = _self_signed(place)
    tokens = place / "tokens"
    tokens.write_text("# one a line\n" + "a" * 32 + "\n" + "b" * 40 + "\n")
    tokens.chmod(0o600)
    svc = Service("--port", "0", "--trusted-model-root", str(place / "roots" / "trusted"),
                  "--auth-token-file", str(tokens), "--tls-cert", str(cert), "--tls-key",
                  str(key), log_path=place / "token.log")
    try:
        target = f"localhost:{svc.port}"
        roots = cert.read_bytes()
        plain = request(model_uri=str(place / "roots/trusted/model.pkl"))
        with grpc.secure_channel(target, grpc.ssl_channel_credentials(roots)) as ch:
            with pytest.raises(grpc.RpcError) as caught:
                expand(ch, plain)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        wrong = grpc.composite_channel_credentials(
            grpc.ssl_channel_credentials(roots), grpc.access_token_call_credentials("c" * 32))
        with grpc.secure_channel(target, wrong) as ch:
            with pytest.raises(grpc.RpcError) as caught:
                expand(ch, plain)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # Plaintext never reaches it.
        with grpc.insecure_channel(target) as ch:
            with pytest.raises(grpc.RpcError) as caught:
                healthy(ch)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        second = place / "second-token"
        second.write_text("b" * 40 + "\n")
        stub = connect(target, token_file=str(second), root_certificates_file=str(cert))
        response = stub.Expand(plain, timeout=60)
        assert response.error == "", response.error
        assert isinstance(stub, beam_expansion_api_pb2_grpc.ExpansionServiceStub)
    finally:
        svc.stop()


@pytest.mark.parametrize("args, says", [
    (["--host", "0.0.0.0"], "--auth-token-file"),
    (["--tls-cert", "x.pem"], "--tls-cert and --tls-key go together"),
])
def test_a_service_others_could_reach_unchecked_does_not_start(args, says):
    done = subprocess.run([sys.executable, "-m", "expansion_service", "--port", "0", *args],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and says in done.stderr, done.stderr
    assert "listening" not in done.stdout


def test_a_token_file_others_can_read_is_refused(place):
    tokens = place / "shared-tokens"
    tokens.write_text("d" * 32 + "\n")
    tokens.chmod(0o644)
    done = subprocess.run([sys.executable, "-m", "expansion_service", "--port", "0",
                           "--auth-token-file", str(tokens)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "chmod 600" in done.stderr, done.stderr
