"""The expansion service as a real process, spoken to over gRPC.

Each hostile request below really runs code under stock Beam: the ``armed`` checks hand a twin
of it to Beam's own ExpansionServiceServicer in this process and see its marker file appear.
The service must refuse it (or strip it) without running it: its marker must never appear.
"""

from __future__ import annotations

import ipaddress
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import grpc
import pytest
from apache_beam.portability import common_urns
from apache_beam.portability.api import (
    beam_artifact_api_pb2,
    beam_artifact_api_pb2_grpc,
    beam_fn_api_pb2,
    beam_fn_api_pb2_grpc,
    beam_runner_api_pb2,
    external_transforms_pb2,
    schema_pb2,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests._service_helpers import (
    FQN_URN,
    FileCreator,
    InputRow,
    Service,
    expand_with_stock_beam,
    expansion_request,
    fqn_payload,
    pickled_bytes,
    pickled_coder,
    pickled_window_fn,
    write_sklearn_model,
)

PROBE_PACKAGE = "xi_probe"
PROBE_MODULE = textwrap.dedent("""
    import os


    def features(row):
        # Records which process handled which row: the service's worker pool, we expect.
        with open(os.path.join(os.environ["XI_PROBE_DIR"], f"pid-{os.getpid()}"), "a") as f:
            f.write(f"{row.id}\\n")
        return [float(x) for x in row.features]
""")


# --- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("expansion")
    (path / PROBE_PACKAGE).mkdir()
    (path / PROBE_PACKAGE / "__init__.py").write_text("")
    (path / PROBE_PACKAGE / "features.py").write_text(PROBE_MODULE)
    (path / "probe").mkdir()
    return path


def _service_env(workdir: Path) -> dict:
    pythonpath = os.pathsep.join(p for p in (str(workdir), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": pythonpath, "XI_PROBE_DIR": str(workdir / "probe")}


@pytest.fixture(scope="module")
def service(workdir):
    svc = Service("--port", "0", "--allow", f"{PROBE_PACKAGE}.features.*",
                  "--trusted-model-root", str(workdir),
                  log_path=workdir / "service.log", env=_service_env(workdir))
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def model(workdir) -> Path:
    return write_sklearn_model(workdir / "model.pkl")


@pytest.fixture
def marker(tmp_path) -> Path:
    """A file that must never appear: smuggled code would create it."""
    return tmp_path / f"pwned-{uuid.uuid4().hex}"


def _inference(model: Path, **overrides) -> bytes:
    kwargs = dict(framework="sklearn", model_uri=str(model), feature_field="features",
                  passthrough_fields=["id"])
    kwargs.update(overrides)
    return fqn_payload("crossinfer.Inference", **{k: v for k, v in kwargs.items() if v is not None})


def _rejected(response) -> str:
    assert response.error.startswith("Rejected by the crossinfer expansion service: "), \
        response.error
    assert "Traceback" not in response.error
    assert not response.transform.spec.urn, "a rejected request must not expand"
    return response.error


# --- serving ---------------------------------------------------------------------------------

def test_health_check_is_serving(service):
    with service.channel() as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", "org.apache.beam.model.expansion.v1.ExpansionService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _listeners(port: int) -> list[ipaddress.IPv4Address]:
    """The local addresses listening on ``port``, from /proc/net/tcp and tcp6."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                local, _, state = line.split()[1:4]
                address, hex_port = local.rsplit(":", 1)
                if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                    continue
                # The kernel prints 32-bit words in host (little-endian) order.
                raw = b"".join(bytes.fromhex(address[i:i + 8])[::-1]
                               for i in range(0, len(address), 8))
                ip = ipaddress.ip_address(raw)
                found.append(getattr(ip, "ipv4_mapped", None) or ip)
    return found


def _non_loopback_ip():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # UDP: picks a route, sends nothing
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def test_binds_loopback_only(service):
    assert _listeners(service.port) == [ipaddress.ip_address("127.0.0.1")]
    assert service.address == f"127.0.0.1:{service.port}"
    ip = _non_loopback_ip()
    if ip is not None:
        with pytest.raises(OSError):
            socket.create_connection((ip, service.port), timeout=2).close()


@pytest.mark.parametrize("glob, says", [
    ("*", "must start with a package name"),
    ("*s.features.*", "must start with a package name"),
    ("os.*", "call into 'os'"),
    ("apache_beam.utils.*", "call into 'apache_beam'"),
    ("crossinfer.*", "call into 'crossinfer'"),
])
def test_allow_refuses_globs_that_reach_beyond_user_packages(glob, says):
    done = subprocess.run([sys.executable, "-m", "expansion_service", "--port", "0",
                           "--allow", glob], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert says in done.stderr and "listening" not in done.stdout


def test_a_port_in_use_fails_naming_it():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "expansion_service", "--port", str(port)],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: in use" in done.stderr
    assert "listening" not in done.stdout


# --- what it refuses, before Beam decodes anything ------------------------------------------

@pytest.mark.parametrize("constructor, args, kwargs, says", [
    ("os.system", ("touch {marker}",), {}, "not served"),
    ("crossinfer.os.system", ("touch {marker}",), {}, "not served"),
    # Names of crossinfer's package beside the two served transforms, and near misses.
    ("crossinfer.InputError", (), {}, "not served"),
    ("crossinfer.Prepared", (), {}, "not served"),
    ("subprocess.call", (), {"args": "touch {marker}", "shell": True}, "not served"),
    ("__callable__", (), {"source": "import pathlib\npathlib.Path({marker!r}).touch()\n"
                                    "lambda pcoll: pcoll"}, "source code"),
    ("__constructor__", (), {"source": "import pathlib\npathlib.Path({marker!r}).touch()\n"
                                       "lambda: None"}, "source code"),
])
def test_rejects_every_other_constructor(service, marker, constructor, args, kwargs, says):
    fill = lambda v: v.format(marker=str(marker)) if isinstance(v, str) else v  # noqa: E731
    payload = fqn_payload(constructor, tuple(fill(a) for a in args),
                          **{k: fill(v) for k, v in kwargs.items()})
    error = _rejected(service.expand(expansion_request(payload)))
    assert repr(constructor) in error and says in error
    assert "crossinfer.Inference" in error and "crossinfer.Prepare" in error
    assert not marker.exists()


def _python_callable_payload(code: str) -> bytes:
    """crossinfer.Inference(framework='sklearn', preprocess=<code as python_callable>).

    Encoded as a plain string, then retyped: the bytes are the same, and building a
    PythonCallableWithSource here would already run the code in this process.
    """
    payload = external_transforms_pb2.ExternalConfigurationPayload.FromString(
        fqn_payload("crossinfer.Inference", framework="sklearn", preprocess=code))
    kwargs = next(f for f in payload.schema.fields if f.name == "kwargs")
    field = next(f for f in kwargs.type.row_type.schema.fields if f.name == "preprocess")
    field.type.CopyFrom(schema_pb2.FieldType(logical_type=schema_pb2.LogicalType(
        urn=common_urns.python_callable.urn,
        representation=schema_pb2.FieldType(atomic_type=schema_pb2.STRING))))
    return payload.SerializeToString()


def _touch_code(path: Path) -> str:
    return f"import pathlib\npathlib.Path({str(path)!r}).touch()\nlambda row: row"


def test_python_callable_field_never_runs(service, marker, tmp_path):
    armed = tmp_path / "armed"
    expand_with_stock_beam(expansion_request(_python_callable_payload(_touch_code(armed))))
    assert armed.exists(), "stock Beam should run the code as it decodes the payload"

    error = _rejected(service.expand(expansion_request(
        _python_callable_payload(_touch_code(marker)))))
    assert "'kwargs.preprocess'" in error and "python_callable" in error
    assert not marker.exists()


def test_pickled_kwarg_never_unpickled(service, model, marker, tmp_path):
    # A kwarg of no plain type travels as beam:logical:pythonsdk_any:v1: a pickle.
    armed = tmp_path / "armed"
    expand_with_stock_beam(expansion_request(_inference(model, extra=FileCreator(armed))))
    assert armed.exists(), "stock Beam should unpickle the kwarg as it decodes the payload"

    request = expansion_request(_inference(model, extra=FileCreator(marker)))
    error = _rejected(service.expand(request))
    assert "'kwargs.extra'" in error and "pythonsdk_any" in error
    assert not marker.exists()


def test_rejects_non_plain_kwargs_and_positional_args(service, model):
    from apache_beam.utils.timestamp import Timestamp

    error = _rejected(service.expand(expansion_request(_inference(model, when=Timestamp.of(0)))))
    assert "'kwargs.when'" in error and "plain values" in error

    positional = fqn_payload("crossinfer.Inference", ("sklearn", str(model)),
                             feature_field="features")
    error = _rejected(service.expand(expansion_request(positional)))
    assert "positional arguments" in error and "keyword arguments only" in error


def test_rejects_python_callable_in_input_schema(service, model):
    request = expansion_request(_inference(model))
    coder_id = request.components.pcollections["input_pc"].coder_id
    schema = schema_pb2.Schema.FromString(request.components.coders[coder_id].spec.payload)
    schema.fields.append(schema_pb2.Field(name="hook", type=schema_pb2.FieldType(
        logical_type=schema_pb2.LogicalType(
            urn=common_urns.python_callable.urn,
            representation=schema_pb2.FieldType(atomic_type=schema_pb2.STRING)))))
    request.components.coders[coder_id].spec.payload = schema.SerializeToString()
    error = _rejected(service.expand(request))
    assert "hook" in error and "python_callable" in error


def _pickled_coder_on_input(request, marker):
    request.components.coders["evil"].CopyFrom(pickled_coder(marker))
    request.components.pcollections["input_pc"].coder_id = "evil"


def _pickled_coder_id(request, marker):
    # Beam unpickles a coder id that is not among the request's coders.
    request.components.pcollections["input_pc"].coder_id = pickled_bytes(marker).decode()


def _pickled_window_fn(request, marker):
    for ws in request.components.windowing_strategies.values():
        ws.window_fn.CopyFrom(pickled_window_fn(marker))


def _pickled_producer(request, marker):
    request.components.transforms["impulse_input"].spec.CopyFrom(
        beam_runner_api_pb2.FunctionSpec(
            urn="beam:transform:pickled_python:v1", payload=pickled_bytes(marker)))


def _pickled_output_coder_id(request, marker):
    request.output_coder_requests["0"] = pickled_bytes(marker).decode()


@pytest.mark.parametrize("arm, says", [
    (_pickled_coder_on_input, "is a pickled Python object"),
    (_pickled_coder_id, "Beam would unpickle the id itself"),
    (_pickled_window_fn, "beam:window_fn:pickled_python:v1"),
    (_pickled_producer, "beam:transform:pickled_python:v1"),
    (_pickled_output_coder_id, "Beam would unpickle the id itself"),
])
def test_pickles_in_the_request_are_never_unpickled(service, model, marker, tmp_path, arm, says):
    armed_request, armed = expansion_request(_inference(model)), tmp_path / "armed"
    arm(armed_request, armed)
    expand_with_stock_beam(armed_request)
    assert armed.exists(), "stock Beam should unpickle this while expanding"

    request = expansion_request(_inference(model))
    arm(request, marker)
    error = _rejected(service.expand(request))
    assert says in error
    assert not marker.exists()


def test_foreign_transform_urn_is_refused(service, marker):
    request = expansion_request(pickled_bytes(marker), urn="beam:transform:pickled_python:v1")
    error = _rejected(service.expand(request))
    assert "'beam:transform:pickled_python:v1' is not served" in error
    assert not marker.exists()


def test_unused_pickled_coders_are_dropped_not_decoded(service, model, marker, tmp_path):
    # A Python client always asks for its output coder as a pickled FastPrimitivesCoder; that
    # request is dropped and the coder removed, never decoded, so the expansion still works.
    def arm(request, path):
        request.components.coders["evil"].CopyFrom(pickled_coder(path))
        request.output_coder_requests["0"] = "evil"

    armed_request, armed = expansion_request(_inference(model)), tmp_path / "armed"
    arm(armed_request, armed)
    expand_with_stock_beam(armed_request)
    assert armed.exists(), "stock Beam should unpickle the requested output coder"

    request = expansion_request(_inference(model))
    arm(request, marker)
    response = service.expand(request)
    assert response.error == ""
    assert set(response.transform.outputs) == {"predictions", "failures"}
    assert "evil" not in response.components.coders
    assert not marker.exists()


def test_artifacts_are_only_the_services_own(service, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve me")
    artifact = beam_runner_api_pb2.ArtifactInformation(
        type_urn=common_urns.artifact_types.FILE.urn,
        type_payload=beam_runner_api_pb2.ArtifactFilePayload(
            path=str(secret)).SerializeToString())
    with service.channel() as channel:
        stub = beam_artifact_api_pb2_grpc.ArtifactRetrievalServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            b"".join(r.data for r in stub.GetArtifact(
                beam_artifact_api_pb2.GetArtifactRequest(artifact=artifact), timeout=10))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


# --- what it expands, and how -----------------------------------------------------------------

def _expanded_environments(response) -> set[tuple[str, bytes]]:
    """(urn, payload) of every environment the expanded transforms run in."""
    ids = {t.environment_id for t_id, t in response.components.transforms.items()
           if t.environment_id and t_id != "impulse_input"}
    assert ids, "the expansion should contain transforms bound to an environment"
    envs = response.components.environments
    return {(envs[i].urn, envs[i].payload) for i in ids}


def test_client_environment_options_do_not_override_the_service(service, model):
    hostile = dict(
        environment_type="DOCKER", environment_config="attacker/image:1",
        sdk_container_image="attacker/image:2", default_sdk_harness_log_level="DEBUG",
        environment_options=["docker_container_image=attacker/image:3"])
    response = service.expand(expansion_request(_inference(model), pipeline_options=hostile))
    assert response.error == ""
    (urn, payload), = _expanded_environments(response)
    assert urn == common_urns.environments.EXTERNAL.urn
    url = beam_runner_api_pb2.ExternalPayload.FromString(payload).endpoint.url
    # The worker pool: the service's own, on loopback TCP (owner-only: test_service_access).
    host, port = url.rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0, url
    assert b"attacker" not in response.SerializeToString()


def test_configuration_error_comes_first(service, workdir):
    missing = workdir / "no-such-model.pkl"
    response = service.expand(expansion_request(_inference(missing)))
    first_line = response.error.splitlines()[0]
    assert re.match(r"^(ConfigurationError|ModelLoadError): model_uri=", first_line), first_line
    assert str(missing) in first_line and "does not exist" in first_line
    assert "Traceback" not in response.error


def test_a_client_of_another_crossinfer_version_is_refused(service, model):
    import importlib.metadata

    mine = importlib.metadata.version("crossinfer")
    same = service.expand(expansion_request(_inference(model, client_version=mine)))
    assert not same.error, same.error
    other = service.expand(expansion_request(_inference(model, client_version="9.9.9")))
    assert other.error.startswith("ConfigurationError: client_version='9.9.9': the client is "
                                  f"crossinfer 9.9.9, but the expansion service has crossinfer "
                                  f"{mine}"), other.error
    assert not other.transform.spec.urn


def test_other_errors_lead_with_type_and_message(service, model):
    response = service.expand(expansion_request(_inference(model, bogus=1)))
    assert "\n" not in response.error and "Traceback" not in response.error
    assert response.error.startswith("TypeError: ") and "'bogus'" in response.error
    assert "service log" in response.error  # where the traceback went


@pytest.mark.parametrize("name", ["os:system", "subprocess:call", "crossinfer._callables:resolve"])
def test_callables_outside_the_allowlist_are_refused(service, model, name):
    payload = _inference(model, feature_field=None, preprocess=name)
    response = service.expand(expansion_request(payload))
    assert response.error.startswith("CallableNotAllowedError: "), response.error
    assert name in response.error and "--allow" in response.error
    assert "Traceback" not in response.error


def test_one_log_line_per_expansion(service, model, tmp_path):
    tag = uuid.uuid4().hex[:8]
    requests = {
        f"ok-{tag}": expansion_request(_inference(model), unique_name=f"ok-{tag}"),
        f"bad-{tag}": expansion_request(_inference(tmp_path / "missing.pkl"),
                                        unique_name=f"bad-{tag}"),
        f"evil-{tag}": expansion_request(fqn_payload("os.system", ("true",)),
                                         unique_name=f"evil-{tag}"),
    }
    for request in requests.values():
        service.expand(request)
    expected = {f"ok-{tag}": "ok", f"bad-{tag}": "ModelLoadError", f"evil-{tag}": "rejected"}
    deadline = time.monotonic() + 60  # the log line follows the answer; a loaded machine is slow
    while True:
        lines = service.log().splitlines()
        mine = {name: [line for line in lines if f"transform='{name}'" in line]
                for name in requests}
        if all(mine.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for name, outcome in expected.items():
        assert len(mine[name]) == 1, mine[name]
        assert re.search(rf"outcome={outcome} ms=\d+$", mine[name][0]), mine[name][0]


def test_sdk_container_image_means_docker_and_no_worker_pool(workdir, model):
    image = "registry.example.com/crossinfer-worker:test"
    svc = Service("--port", "0", "--sdk-container-image", image,
                  "--trusted-model-root", str(workdir),
                  log_path=workdir / "docker-service.log", env=_service_env(workdir))
    try:
        response = svc.expand(expansion_request(_inference(model)))
        assert response.error == ""
        docker = beam_runner_api_pb2.DockerPayload(container_image=image).SerializeToString()
        assert _expanded_environments(response) == {(common_urns.environments.DOCKER.urn,
                                                     docker)}
        with svc.channel() as channel:
            pool = beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                pool.StartWorker(beam_fn_api_pb2.StartWorkerRequest(worker_id="x"), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        svc.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_exits_promptly_with_code_0(workdir, sig):
    svc = Service("--port", "0", log_path=workdir / f"signal-{int(sig)}.log")
    with svc.channel() as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    code, seconds = svc.stop(sig)
    assert code == 0, svc.log()
    assert seconds < 2.0


# --- a real Python client, end to end ----------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def job_server(workdir):
    port = _free_port()
    with open(workdir / "job-server.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"job server did not start: {(workdir / 'job-server.log').read_text()}")
            time.sleep(0.1)
    yield f"localhost:{port}"
    proc.terminate()  # Beam's job server may linger after SIGTERM
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_python_pipeline_round_trip(service, model, job_server, workdir):
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.util import assert_that, equal_to
    from apache_beam.transforms.external import ExternalTransform

    beam.coders.registry.register_coder(InputRow, beam.coders.RowCoder)
    rows = [InputRow(id=i, features=[(i % 3) - 1.0, 0.5, -0.2, 1.0]) for i in range(12)]
    with open(model, "rb") as f:
        expected = pickle.load(f).predict([r.features for r in rows]).tolist()
    payload = _inference(model, feature_field=None, preprocess=f"{PROBE_PACKAGE}.features:features")
    options = PipelineOptions(flags=[], runner="PortableRunner", job_endpoint=job_server,
                              environment_type="LOOPBACK")
    with beam.Pipeline(options=options) as p:
        out = (p
               | beam.Create(rows).with_output_types(InputRow)
               | ExternalTransform(FQN_URN, payload, service.address))
        assert_that(out["predictions"] | beam.Map(lambda r: (r.id, r.label, r.model_id)),
                    equal_to([(i, label, str(model)) for i, label in enumerate(expected)]),
                    label="predictions")
        assert_that(out["failures"], equal_to([]), label="failures")
    handled = {int(p.name.split("-")[1]): sorted(int(i) for i in p.read_text().split())
               for p in (workdir / "probe").glob("pid-*")}
    assert handled == {service.proc.pid: list(range(len(rows)))}, \
        "every row should be preprocessed once, in the service's own worker pool"
