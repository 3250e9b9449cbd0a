"""The expansion service as an attacker sees it: a real service process, hostile requests.

Every attempt below would run code, read a file, hang or exhaust the service if a defence were
missing. Each checks that no code ran (``Code.ran``: no marker file from the service process, no
token in the service log from an inspector; positive controls show both can see code that does
run), that the service did not crash, and (after every test) that health still answers. The
heavier checks (fuzzing, concurrency, memory, denial of service, SIGTERM) print their figures.
"""

from __future__ import annotations

import concurrent.futures
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
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
    endpoints_pb2,
    external_transforms_pb2,
    schema_pb2,
)

from tests._security_helpers import code_pickle
from tests._service_helpers import (
    expansion_request,
    fqn_payload,
    pickled_bytes,
    pickled_coder,
    pickled_window_fn,
)
from tests._security_base import (  # noqa: F401 - fixtures
    EXPAND, PROBE, Code, _callable_type, _nested_payload, _rss_kib, channel, check_the_checks,
    code, expand, healthy, inference, place, refused, service, still_serving)

pytestmark = pytest.mark.timeout(240)

def test_a_good_request_expands(channel, place):
    response = expand(channel, expansion_request(inference(
        model_uri=str(place / "roots" / "trusted" / "model.pkl"))))
    assert response.error == ""
    assert set(response.transform.outputs) == {"predictions", "failures"}


def test_the_checks_see_code_that_runs(channel, service, place):
    # Positive controls: without them a "no code ran" check below could pass whether or not
    # code ran (a marker file from an inspector never appears).
    check_the_checks(channel, service, place)


# --- constructors and URNs ------------------------------------------------------------------

@pytest.mark.parametrize("constructor, args, kwargs", [
    ("os.system", ("{shell}",), {}),
    ("subprocess.call", (), {"args": "{shell}", "shell": True}),
    ("builtins.exec", ("{source}",), {}),
    ("crossinfer.os.system", ("{shell}",), {}),
    ("crossinfer.Inference.__init__", (), {}),
    ("crossinfer._callables.resolve", ("os:system", "x"), {}),
    ("apache_beam.Map", (), {}),
    ("__callable__", (), {"source": "{source}lambda pcoll: pcoll"}),
    ("__constructor__", (), {"source": "{source}lambda: None"}),
    ("crossinfer.Inference ", (), {}),
])
def test_other_constructors(channel, service, code, constructor, args, kwargs):
    fill = lambda v: v.replace("{shell}", code.shell).replace(  # noqa: E731
        "{source}", code.source) if isinstance(v, str) else v
    payload = fqn_payload(constructor, tuple(fill(a) for a in args),
                          **{k: fill(v) for k, v in kwargs.items()})
    refused(expand(channel, expansion_request(payload)), "Rejected")
    assert not code.ran(service)


@pytest.mark.parametrize("urn", [
    "beam:transform:pickled_python:v1",
    "beam:transforms:python:callable_source",
    "beam:schematransform:org.apache.beam:yaml:v1",
    "beam:transform:org.apache.beam:javasdk:v1",
    "",
])
def test_other_urns(channel, service, code, urn):
    refused(expand(channel, expansion_request(pickled_bytes(code.pickled()), urn=urn)),
            "not served")
    assert not code.ran(service)


# --- code and pickles inside the request -------------------------------------------------

def _retype(payload: bytes, path: list[str], field_type) -> bytes:
    message = external_transforms_pb2.ExternalConfigurationPayload.FromString(payload)
    schema = message.schema
    for name in path[:-1]:
        schema = next(f for f in schema.fields if f.name == name).type.row_type.schema
    field = next(f for f in schema.fields if f.name == path[-1])
    field.type.CopyFrom(field_type)
    return message.SerializeToString()






def _callable_kwarg(place, code):
    return expansion_request(_retype(inference(
        model_uri=str(place / "roots/trusted/model.pkl"), preprocess=code.callable_source,
        feature_field=None), ["kwargs", "preprocess"], _callable_type()))


def _callable_nested(place, code):
    payload = inference(model_uri=str(place / "roots/trusted/model.pkl"),
                        model_params={"hook": code.callable_source})
    return expansion_request(_retype(payload, ["kwargs", "model_params"], schema_pb2.FieldType(
        map_type=schema_pb2.MapType(key_type=schema_pb2.FieldType(atomic_type=schema_pb2.STRING),
                                    value_type=_callable_type()))))


def _pickled_kwarg(place, code):
    return expansion_request(inference(model_uri=str(place / "roots/trusted/model.pkl"),
                                       extra=code.pickled()))


def _pickled_in_list(place, code):
    return expansion_request(inference(model_uri=str(place / "roots/trusted/model.pkl"),
                                       passthrough_fields=[code.pickled()]))


def _callable_in_input_schema(place, code):
    request = expansion_request(inference(model_uri=str(place / "roots/trusted/model.pkl")))
    coder_id = request.components.pcollections["input_pc"].coder_id
    schema = schema_pb2.Schema.FromString(request.components.coders[coder_id].spec.payload)
    schema.fields.append(schema_pb2.Field(name="hook", type=_callable_type()))
    request.components.coders[coder_id].spec.payload = schema.SerializeToString()
    return request


def _callable_schema_option(place, code):
    message = external_transforms_pb2.ExternalConfigurationPayload.FromString(
        inference(model_uri=str(place / "roots/trusted/model.pkl")))
    message.schema.options.append(schema_pb2.Option(name="x", type=_callable_type()))
    return expansion_request(message.SerializeToString())


def _pickled_input_coder(place, code):
    request = expansion_request(inference(model_uri=str(place / "roots/trusted/model.pkl")))
    request.components.coders["evil"].CopyFrom(pickled_coder(code.pickled()))
    request.components.pcollections["input_pc"].coder_id = "evil"
    return request


def _pickled_component_coder(place, code):
    request = expansion_request(inference(model_uri=str(place / "roots/trusted/model.pkl")))
    request.components.coders["evil"].CopyFrom(pickled_coder(code.pickled()))
    request.components.coders["kv"].CopyFrom(beam_runner_api_pb2.Coder(
        spec=beam_runner_api_pb2.FunctionSpec(urn=common_urns.coders.KV.urn),
        component_coder_ids=["evil", "evil"]))
    request.components.pcollections["input_pc"].coder_id = "kv"
    return request


def _pickled_coder_id(place, code):
    request = expansion_request(inference(model_uri=str(place / "roots/trusted/model.pkl")))
    request.components.pcollections["input_pc"].coder_id = pickled_bytes(code.pickled()).decode()
    return request


def _pickled_window_fn(place, code):
    request = expansion_request(inference(model_uri=str(place / "roots/trusted/model.pkl")))
    for ws in request.components.windowing_strategies.values():
        ws.window_fn.CopyFrom(pickled_window_fn(code.pickled()))
    return request


def _pickled_producer(place, code):
    request = expansion_request(inference(model_uri=str(place / "roots/trusted/model.pkl")))
    request.components.transforms["impulse_input"].spec.CopyFrom(beam_runner_api_pb2.FunctionSpec(
        urn="beam:transform:pickled_python:v1", payload=pickled_bytes(code.pickled())))
    return request


def _pickled_output_coder_id(place, code):
    request = expansion_request(inference(model_uri=str(place / "roots/trusted/model.pkl")))
    request.output_coder_requests["0"] = pickled_bytes(code.pickled()).decode()
    return request


def _pickled_option(place, code):
    import base64

    return expansion_request(
        inference(model_uri=str(place / "roots/trusted/model.pkl")),
        pipeline_options={"on_success_matcher": base64.b64encode(
            pickle.dumps(code.pickled())).decode(),
            "pickle_library": "dill", "environment_type": "DOCKER"})


@pytest.mark.parametrize("build", [
    _callable_kwarg, _callable_nested, _pickled_kwarg, _pickled_in_list,
    _callable_in_input_schema, _callable_schema_option, _pickled_input_coder,
    _pickled_component_coder, _pickled_coder_id, _pickled_window_fn, _pickled_producer,
    _pickled_output_coder_id, _pickled_option,
])
def test_code_in_the_request_never_runs(channel, service, place, code, build):
    response = expand(channel, build(place, code))
    if build is not _pickled_option:  # options are filtered, the expansion goes on
        refused(response)
    assert not code.ran(service)


def _coder_cycle(place):
    request = expansion_request(inference(model_uri=str(place / "roots/trusted/model.pkl")))
    coders = request.components.coders
    kv = common_urns.coders.KV.urn
    coders["a"].CopyFrom(beam_runner_api_pb2.Coder(
        spec=beam_runner_api_pb2.FunctionSpec(urn=kv), component_coder_ids=["b", "b"]))
    coders["b"].CopyFrom(beam_runner_api_pb2.Coder(
        spec=beam_runner_api_pb2.FunctionSpec(urn=kv), component_coder_ids=["a", "a"]))
    request.components.pcollections["input_pc"].coder_id = "a"
    return request


def _coder_chain(place):
    request = expansion_request(inference(model_uri=str(place / "roots/trusted/model.pkl")))
    coders = request.components.coders
    row = request.components.pcollections["input_pc"].coder_id
    for i in range(200):
        coders[f"c{i}"].CopyFrom(beam_runner_api_pb2.Coder(
            spec=beam_runner_api_pb2.FunctionSpec(urn=common_urns.coders.ITERABLE.urn),
            component_coder_ids=[f"c{i + 1}" if i < 199 else row]))
    request.components.pcollections["input_pc"].coder_id = "c0"
    return request


@pytest.mark.parametrize("build, says", [(_coder_cycle, "its own component"),
                                         (_coder_chain, "deep")])
def test_coder_cycles_and_chains(channel, place, build, says):
    # Beam builds component coders recursively: a cycle recursed until Python's recursion limit.
    refused(expand(channel, build(place)), "Rejected", says)


def test_lengths_past_the_end_of_the_payload(channel, place):
    # Beam's compiled decoder checks no bounds: a string longer than the bytes left read the
    # service's memory behind them (into the decoded value), or crashed it (SIGSEGV).
    message = external_transforms_pb2.ExternalConfigurationPayload.FromString(
        inference(model_uri=str(place / "roots/trusted/model.pkl")))
    for claimed in (40, 4000, 10 ** 9):
        data = bytearray(message.payload)
        end = data.index(b"crossinfer.Inference") + len("crossinfer.Inference")
        length = bytearray()
        value = claimed
        while value > 0x7F:
            length.append(0x80 | value & 0x7F)
            value >>= 7
        length.append(value)
        # The constructor's length byte, then as many bytes as it claims, not one more.
        data[end - len("crossinfer.Inference") - 1:] = length + b"crossinfer.Inference"
        message.payload = bytes(data)
        refused(expand(channel, expansion_request(message.SerializeToString())),
                "Rejected", "past the end")


# --- named callables ------------------------------------------------------------------------

@pytest.mark.parametrize("argument, name", [
    ("preprocess", "os:system"),
    ("preprocess", "builtins:eval"),
    ("preprocess", "subprocess:call"),
    ("preprocess", "numpy.testing._private.utils:runstring"),
    ("preprocess", "yaml:unsafe_load"),
    ("preprocess", "pickle:loads"),
    ("preprocess", "crossinfer._callables:resolve"),
    ("preprocess", f"{PROBE}.sidecar:f"),  # a sibling module: importing it runs it
    ("preprocess", f"{PROBE}.__main__:f"),
    ("preprocess", f"{PROBE}.features:os"),  # a module the allowed module imported
    ("preprocess", f"{PROBE}.features:__builtins__"),
    ("postprocess", "os:system"),
    ("postprocess", f"{PROBE}.features.os:system"),
    ("model_class", "subprocess:Popen"),
    ("handler", "os:system"),
])
def test_callables_outside_the_allowlist(channel, place, argument, name):
    # Each request is valid but for the callable, so only the allowlist can refuse it: a custom
    # postprocess has its output_schema, the state_dict file exists, and the refusal must be
    # the allowlist's own error, not a missing file or argument.
    kwargs = {argument: name}
    if argument == "preprocess":
        kwargs["feature_field"] = None
    if argument == "postprocess":
        kwargs["output_schema"] = {"value": "float64"}
    if argument == "model_class":
        state = place / "roots/data/state.pt"
        if not state.exists():
            import torch
            torch.save({"weight": torch.zeros(2, 2)}, state)
        kwargs.update(framework="pytorch", model_uri=str(state))
    elif argument == "handler":
        kwargs.update(framework="custom", feature_field="features")
    else:
        kwargs["model_uri"] = str(place / "roots/trusted/model.pkl")
    refused(expand(channel, expansion_request(inference(**kwargs))), "CallableNotAllowedError",
            repr(name))


# --- model files and URIs ---------------------------------------------------------------------

def _code_pickle(path: Path, code: Code) -> Path:
    """A model file (a real estimator) whose loading runs ``code``: if it is ever opened, it is
    in an inspector, where only ``code.ran``'s log token can tell."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return code_pickle(path, code.source)


@pytest.mark.parametrize("framework, name", [
    ("sklearn", "evil.pkl"), ("sklearn", "evil.joblib"), ("pytorch", "evil.pt"),
    ("custom", "evil.bin"),
])
def test_code_formats_outside_trusted_roots(channel, service, place, code, framework, name):
    path = _code_pickle(place / "roots" / "data" / name, code)
    kwargs = dict(framework=framework, model_uri=str(path))
    if framework == "custom":
        kwargs.update(handler=f"{PROBE}.features:features")
    error = refused(expand(channel, expansion_request(inference(**kwargs))))
    assert "trusted model root" in error or "CallableNotAllowed" in error
    assert not code.ran(service)


def _uri_cases(place: Path, code: Code) -> dict[str, str]:
    data = place / "roots" / "data"
    outside = _code_pickle(place / "outside" / f"{code.id}.pkl", code)
    escape = data / f"link-{code.id}.pkl"
    escape.symlink_to(outside)
    to_stdout = data / f"stdout-{code.id}"
    to_stdout.symlink_to("/proc/self/fd/1")
    fifo = data / f"fifo-{code.id}"
    os.mkfifo(fifo)
    sock_path = data / f"s-{code.id[:8]}"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    sock.close()
    return {
        "outside": str(outside),
        "dotdot": f"{data}/../../outside/{outside.name}",
        "symlink escape": str(escape),
        "symlink to stdout": str(to_stdout),
        "proc fd": "/proc/self/fd/1",
        "proc environ": "/proc/self/environ",
        "dev stdin": "/dev/stdin",
        "dev zero": "/dev/zero",
        "fifo": str(fifo),
        "socket": str(sock_path),
        "directory": str(data),
        "relative": "model.pkl",
        "file scheme": f"file://{outside}",
        "gs other bucket": "gs://someone-else/model.pkl",
        "gs dotdot": "gs://bucket/models/../x.pkl",
        "nul": f"{data}/x\x00.pkl",
        "long": "/" + "a" * 5000,
        "proc version": "/proc/version",
    }


URI_CASES = [
    "outside", "dotdot", "symlink escape", "symlink to stdout", "proc fd", "proc environ",
    "dev stdin", "dev zero", "fifo", "socket", "directory", "relative", "file scheme",
    "gs other bucket", "gs dotdot", "nul", "long", "proc version"]


@pytest.mark.parametrize("case", URI_CASES)
@pytest.mark.parametrize("framework", ["onnx", "sklearn"])
def test_uris_outside_the_repository(channel, service, place, code, case, framework):
    uri = _uri_cases(place, code)[case]
    # Refused by the model repository's check, naming model_uri: not a timeout (a fifo or
    # device opened for reading would block until the request's deadline), not another error.
    error = refused(expand(channel, expansion_request(inference(framework=framework,
                                                                model_uri=uri)), timeout=30))
    assert error.startswith("ModelLoadError: model_uri="), error
    assert "Linux version" not in error and "PATH=" not in error  # no file contents
    assert str(place / "roots") not in error.replace(repr(uri)[1:-1], "")  # no service paths
    assert not code.ran(service)


def test_models_map_with_one_bad_value(channel, service, place, code):
    outside = _code_pickle(place / "outside" / f"{code.id}.pkl", code)
    payload = inference(model_uri=None, models={
        "good": str(place / "roots/trusted/model.pkl"), "bad": str(outside)},
        model_key_field="id")
    refused(expand(channel, expansion_request(payload)), "models['bad']")
    assert not code.ran(service)


def test_missing_and_unreadable_outside_roots_read_the_same(channel, place):
    secret = place / "outside" / "secret.pkl"
    secret.write_bytes(b"x")
    secret.chmod(0)
    answers = [expand(channel, expansion_request(inference(model_uri=uri))).error
               for uri in (str(secret), str(place / "outside" / "nope.pkl"))]
    assert answers[0].replace("secret", "nope") == answers[1]


# --- --allow globs ----------------------------------------------------------------------------

@pytest.mark.parametrize("extra", [
    ["--allow", "numpy.*"], ["--allow", "yaml.*"], ["--allow", "torch.*"],
    ["--allow", "sklearn.*"], ["--allow", "os.*"], ["--allow", "*"],
    ["--allow", "apache_beam.*"], ["--allow", "crossinfer.*"], ["--allow", "__main__.*"],
    ["--allow", "numpy.*", "--own-distribution", "numpy"],
    ["--model-root", "/"], ["--model-root", "/proc/self"],
])
def test_service_refuses_to_start_with(extra):
    done = subprocess.run([sys.executable, "-m", "expansion_service", "--port", "0", *extra],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "listening" not in done.stdout


# --- the worker pool ----------------------------------------------------------------------------

def _pool_socket(channel) -> str:
    response = expand(channel, expansion_request(inference(
        model_uri=str(Path(os.environ["XI_SEC_PLACE"]) / "roots/trusted/model.pkl"))))
    for env in response.components.environments.values():
        if env.urn == common_urns.environments.EXTERNAL.urn:
            return beam_runner_api_pb2.ExternalPayload.FromString(env.payload).endpoint.url
    raise AssertionError("no EXTERNAL environment")


@pytest.fixture(scope="module")
def pool(channel, place):
    os.environ["XI_SEC_PLACE"] = str(place)
    url = _pool_socket(channel)
    with grpc.insecure_channel(url) as ch:
        yield url, beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolStub(ch)


def test_worker_pool_is_not_on_the_tcp_port(channel):
    with pytest.raises(grpc.RpcError) as caught:
        beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolStub(channel).StartWorker(
            beam_fn_api_pb2.StartWorkerRequest(worker_id="x"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("url", ["10.1.2.3:50000", "example.com:443", "unix:/tmp/x.sock",
                                 "[::ffff:8.8.8.8]:53", "closed"])
def test_start_worker_dials_only_live_loopback_endpoints(pool, url):
    if url == "closed":
        url = f"127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    reply = pool[1].StartWorker(beam_fn_api_pb2.StartWorkerRequest(
        worker_id=uuid.uuid4().hex, control_endpoint=endpoints_pb2.ApiServiceDescriptor(url=url)),
        timeout=30)
    assert reply.error.startswith("refused"), reply.error
    assert time.monotonic() - started < 5


def test_start_worker_storm_does_not_take_the_service_down(pool, channel, service):
    threads_before = len(os.listdir(f"/proc/{service.proc.pid}/task"))
    url = f"127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(16) as ex:
        replies = list(ex.map(lambda i: pool[1].StartWorker(beam_fn_api_pb2.StartWorkerRequest(
            worker_id=f"w{i}", control_endpoint=endpoints_pb2.ApiServiceDescriptor(url=url)),
            timeout=30), range(32)))
    assert all(r.error for r in replies)
    assert healthy(channel) and time.monotonic() - started < 10
    assert len(os.listdir(f"/proc/{service.proc.pid}/task")) <= threads_before + 8


def test_artifacts_only_the_services_own(channel, place):
    artifact = beam_runner_api_pb2.ArtifactInformation(
        type_urn=common_urns.artifact_types.FILE.urn,
        type_payload=beam_runner_api_pb2.ArtifactFilePayload(
            path="/etc/passwd").SerializeToString())
    with pytest.raises(grpc.RpcError) as caught:
        b"".join(r.data for r in beam_artifact_api_pb2_grpc.ArtifactRetrievalServiceStub(
            channel).GetArtifact(beam_artifact_api_pb2.GetArtifactRequest(artifact=artifact),
                                 timeout=10))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


# --- denial of service ----------------------------------------------------------------------------



@pytest.mark.parametrize("depth", [12, 20])
def test_deep_nesting_is_refused_at_once(channel, depth):
    started = time.monotonic()
    refused(expand(channel, expansion_request(_nested_payload(depth))), "limit")
    assert time.monotonic() - started < 5


def test_oversized_request(channel):
    big = inference(model_uri="/x.pkl", model_params={"blob": "x" * (5 * 1024 * 1024)})
    with pytest.raises(grpc.RpcError) as caught:
        expand(channel, expansion_request(big))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize("kwargs, says", [
    ({"model_copies": 10_000}, "model_copies"),
    ({"max_batch_size": 10 ** 9}, "max_batch_size"),
    ({"models": {f"k{i}": "/x.pkl" for i in range(100)}, "model_key_field": "id"}, "models"),
    ({"passthrough_fields": ["id"] * 20_000}, "items"),
    ({"feature_field": "f" * 70_000}, "long"),
])
def test_limits_on_values(channel, kwargs, says):
    payload = inference(model_uri=None if "models" in kwargs else "/x.pkl", **kwargs)
    refused(expand(channel, expansion_request(payload)), says)


def test_blocking_paths_do_not_block(channel):
    uris = ["/proc/self/fd/1", "/dev/stdin", "/proc/self/fd/0", "/dev/random"] * 5
    with concurrent.futures.ThreadPoolExecutor(20) as ex:
        errors = list(ex.map(lambda u: expand(channel, expansion_request(inference(
            model_uri=u)), timeout=60).error, uris))
    assert all(errors)
    assert healthy(channel)


def _looping_torchscript(path: Path) -> Path:
    import torch
    from typing import Tuple

    class Loop(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.n = 1

        @torch.jit.export
        def __getstate__(self) -> Tuple[int, bool]:
            return (self.n, self.training)

        @torch.jit.export
        def __setstate__(self, state: Tuple[int, bool]) -> None:
            i = state[0]
            while i > 0:
                i = i + 1
            self.n = i
            self.training = state[1]

        def forward(self, x):
            return x

    torch.jit.save(torch.jit.script(Loop()), str(path))
    return path


_BOMB_BYTES = 3 * (1 << 14) * 4 * (1 << 13) * 4  # float32s for a probe batch of 3 rows: 6 GiB


def _onnx_bomb(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    # A constant the size of the input times (2^14, 2^13): computed when the graph runs, from
    # the batch's shape, so no constant folding can refuse it. crossinfer's signature probe
    # runs it on 3 rows of 4: 49,152 x 32,768 floats, 6 GiB.
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Mul", ["s", "k"], ["shape"]),
        helper.make_node("ConstantOfShape", ["shape"], ["big"],
                         value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
        helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
        helper.make_node("Add", ["x", "total"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "bomb", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[helper.make_tensor("k", TensorProto.INT64, [2], [1 << 14, 1 << 13])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_looping_torchscript_and_onnx_bomb(channel, place, service):
    loop = _looping_torchscript(place / "roots" / "trusted" / "loop.pt")
    bomb = _onnx_bomb(place / "roots" / "data" / "bomb.onnx")
    assert bomb.stat().st_size < 1024
    print(f"\nONNX bomb: {bomb.stat().st_size} bytes, {_BOMB_BYTES / (1 << 30):.0f} GiB on a "
          "probe batch")
    requests = [expansion_request(inference(framework="pytorch", model_uri=str(loop))),
                expansion_request(inference(framework="onnx", model_uri=str(bomb)))]
    rss_before = _rss_kib(service.proc.pid)
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        futures = [ex.submit(expand, channel, r, 120) for r in requests]
        while not all(f.done() for f in futures):
            assert healthy(channel)  # answers while the models load
            time.sleep(0.5)
    seconds = time.monotonic() - started
    loop_error = refused(futures[0].result(), "ModelLoadError", "CPU")
    print(f"  TorchScript: {loop_error}")
    bomb_error = refused(futures[1].result(), "ModelLoadError", "hit the memory limit",
                         "1024 MiB of memory")
    assert str(place) not in bomb_error and "onnxruntime" not in bomb_error
    print(f"  ONNX bomb: {bomb_error}")
    print(f"  both refused in {seconds:.1f} s")
    assert seconds < 30
    # It went off in the inspector: onnxruntime asked for the whole 6 GiB there.
    assert f"requested buffer of size {_BOMB_BYTES}" in service.log()
    grown = _rss_kib(service.proc.pid) - rss_before
    print(f"  the service's RSS grew by {grown} KiB")
    assert grown < 64 * 1024, "the bomb went off in the service itself"
    # The service still expands, and inspects the next model.
    test_a_good_request_expands(channel, place)
    onnx_model = _small_onnx(place / "roots" / "data" / "small.onnx")
    assert expand(channel, expansion_request(inference(
        framework="onnx", model_uri=str(onnx_model), postprocess="regression"))).error == ""


def _small_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0, axes=[1])], "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), str(path))
    return path


# --- last: SIGTERM in the middle of an expansion ------------------------------------------------

def test_sigterm_during_an_expansion(service, channel, place):
    from tests._security_helpers import alive, code_pickle, wait_until

    # A model that says when its inspection is under way, then spins: no sleep guesses when.
    # (It says so in the service log: the sandbox lets it write nowhere outside.)
    spin = code_pickle(place / "roots" / "trusted" / "spin.pkl",
                       "print('sigterm-begun', flush=True)\nwhile True:\n    pass\n")
    request = expansion_request(inference(model_uri=str(spin)))
    outcome = []

    def call() -> None:
        try:
            outcome.append(bool(expand(channel, request, 60).error))
        except grpc.RpcError:
            outcome.append(True)  # the RPC died with the service: expected

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    assert wait_until(lambda: "sigterm-begun" in service.log(), 60.0), \
        "the inspection never started"
    children = subprocess.run(["pgrep", "-P", str(service.proc.pid)], capture_output=True,
                              text=True).stdout.split()
    assert children
    code, seconds = service.stop(signal.SIGTERM)
    print(f"\nSIGTERM during an expansion: exit code {code} in {seconds:.2f} s")
    assert code == 0 and seconds < 2.0
    thread.join(10)
    assert outcome == [True], "the expansion in flight must fail, and the test must see it"
    assert wait_until(lambda: not any(alive(int(c)) for c in children), 5.0), \
        f"inspector processes outlived the service: {children}"
