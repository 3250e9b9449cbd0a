"""The service the security tests attack (shared by test_security and test_security_fuzz):
its fixtures, and the helpers that build and send requests."""

from __future__ import annotations

import os
import textwrap
import uuid
from pathlib import Path

import pytest
from apache_beam.portability import common_urns
from apache_beam.portability.api import (
    external_transforms_pb2,
    schema_pb2,
)

from tests._security_helpers import channel, healthy  # noqa: F401 - channel: a fixture
from tests._service_helpers import (
    Service,
    fqn_payload,
    write_sklearn_model,
)


PROBE = "xi_sec"
EXPAND = "/org.apache.beam.model.expansion.v1.ExpansionService/Expand"


# --- the service under attack -------------------------------------------------------------

@pytest.fixture(scope="module")
def place(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("security")
    for d in ("roots/data", "roots/trusted", "outside", "markers", PROBE):
        (path / d).mkdir(parents=True)
    (path / PROBE / "__init__.py").write_text("")
    (path / PROBE / "features.py").write_text(textwrap.dedent("""
        import os

        def features(row):
            return [float(x) for x in row.features]
    """))
    # Importing this sibling module creates its marker: the service must never import it.
    (path / PROBE / "sidecar.py").write_text(textwrap.dedent(f"""
        import pathlib
        pathlib.Path({str(path / 'markers' / 'sidecar')!r}).touch()

        def f(row):
            return row
    """))
    (path / PROBE / "__main__.py").write_text(
        f"import pathlib\npathlib.Path({str(path / 'markers' / 'main')!r}).touch()\n"
        "def f(row):\n    return row\n")
    write_sklearn_model(path / "roots" / "trusted" / "model.pkl")
    return path


@pytest.fixture(scope="module")
def service(place):
    pythonpath = os.pathsep.join(p for p in (str(place), os.environ.get("PYTHONPATH")) if p)
    svc = Service("--port", "0", "--allow", f"{PROBE}.features.*",
                  "--model-root", str(place / "roots" / "data"),
                  "--trusted-model-root", str(place / "roots" / "trusted"),
                  "--inspect-timeout", "6", "--inspect-cpu-seconds", "4",
                  "--inspect-memory-mb", "1024",
                  log_path=place / "service.log", env={"PYTHONPATH": pythonpath})
    yield svc
    svc.stop()




@pytest.fixture(autouse=True)
def still_serving(request, place):
    """After every test: the service runs, answers health, and no marker exists."""
    yield
    if "service" not in request.fixturenames:
        return
    svc = request.getfixturevalue("service")
    if svc.proc.poll() is None:
        assert healthy(request.getfixturevalue("channel"))
    assert not list((place / "markers").iterdir()), "code ran in the service"


@pytest.fixture
def marker(place) -> Path:
    return place / "markers" / uuid.uuid4().hex


def expand(channel, request, timeout=60):
    from apache_beam.portability.api import beam_expansion_api_pb2_grpc

    return beam_expansion_api_pb2_grpc.ExpansionServiceStub(channel).Expand(
        request, timeout=timeout)


def inference(**kwargs) -> bytes:
    base = dict(framework="sklearn", feature_field="features", passthrough_fields=["id"])
    base.update(kwargs)
    return fqn_payload("crossinfer.Inference", **{k: v for k, v in base.items() if v is not None})


def refused(response, *says: str) -> str:
    error = response.error
    assert error, "the request should have been refused"
    assert not response.transform.spec.urn
    assert "Traceback" not in error and "File \"/" not in error
    for word in says:
        assert word in error, error
    return error


def _callable_type():
    return schema_pb2.FieldType(logical_type=schema_pb2.LogicalType(
        urn=common_urns.python_callable.urn,
        representation=schema_pb2.FieldType(atomic_type=schema_pb2.STRING)))


def _code(marker: Path) -> str:
    return f"import pathlib\npathlib.Path({str(marker)!r}).touch()\nlambda row: row"


def _nested_payload(depth: int) -> bytes:
    value: object = 1
    for _ in range(depth):
        value = {"a": value, "b": value} if isinstance(value, dict) else {"a": value}
    message = external_transforms_pb2.ExternalConfigurationPayload.FromString(
        inference(model_uri="/x.pkl", model_params={"a": 1}))

    def nest(level):
        schema = schema_pb2.Schema(id=uuid.uuid4().hex)
        # A chain, as in the 1.3 KB attack: one row and one number per level.
        if level:
            schema.fields.append(schema_pb2.Field(name="a", type=schema_pb2.FieldType(
                row_type=schema_pb2.RowType(schema=nest(level - 1)))))
        schema.fields.append(schema_pb2.Field(name="b", type=schema_pb2.FieldType(
            atomic_type=schema_pb2.INT64)))
        return schema

    kwargs = next(f for f in message.schema.fields if f.name == "kwargs")
    params = next(f for f in kwargs.type.row_type.schema.fields if f.name == "model_params")
    params.type.CopyFrom(schema_pb2.FieldType(row_type=schema_pb2.RowType(schema=nest(depth))))
    return message.SerializeToString()


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
