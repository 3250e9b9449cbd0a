"""The service the security tests attack (shared by test_security and test_security_fuzz):
its fixtures, and the helpers that build and send requests."""

from __future__ import annotations

import os
import re
import textwrap
import uuid
from pathlib import Path
from typing import Optional

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


# --- did code run? ----------------------------------------------------------------------------

TOKEN = "CROSSINFER-RAN-"
_TOKENS = re.compile(re.escape(TOKEN) + r"([0-9a-f]{32})")
# Code that positive controls run where it may run (their markers and tokens are expected).
ALLOWED: set[str] = set()


class Code:
    """Code a test smuggles in, and ``ran(service)``: whether it ran, wherever it ran.

    In the service process (the real danger) it creates its marker file under
    ``place/markers``. In an inspector it can write no file the test sees (its own namespaces,
    a read-only root), so it also prints its token to stderr, which reaches the service log
    either way (an inspector's output is relayed, quoted: ``inspector PID said: '...'``). The
    token is never written whole in the code, so a request or error the service logs cannot
    contain it: only code that ran can have printed it.
    """

    def __init__(self, place: Path, name: Optional[str] = None) -> None:
        self.id = uuid.uuid5(uuid.NAMESPACE_URL, f"{place}/{name}").hex if name else \
            uuid.uuid4().hex
        self.marker = place / "markers" / self.id
        self.token = TOKEN + self.id

    @property
    def source(self) -> str:
        """Python statements that say they ran (token first: writing the marker may fail)."""
        return (f"import pathlib, sys\n"
                f"print({TOKEN!r} + {self.id!r}, file=sys.stderr, flush=True)\n"
                f"try:\n    pathlib.Path({str(self.marker)!r}).touch()\n"
                f"except OSError:\n    pass\n")

    @property
    def callable_source(self) -> str:
        """A Beam python_callable source: the statements, then ``lambda row: row``."""
        return self.source + "lambda row: row"

    @property
    def shell(self) -> str:
        """A shell command that does the same."""
        return f"touch {self.marker}; echo {TOKEN}''{self.id} >&2"

    def pickled(self) -> "_Runs":
        """An object whose unpickling runs the statements."""
        return _Runs(self.source)

    def ran(self, service) -> bool:
        return self.marker.exists() or self.token in service.log()

    def allow(self) -> "Code":
        """A positive control: this code runs where it may; the after-test check accepts it."""
        ALLOWED.add(self.id)
        return self


class _Runs:
    def __init__(self, source: str) -> None:
        self.source = source

    def __reduce__(self):
        return (exec, (self.source,))


def code_that_ran(place: Path, service) -> set[str]:
    """Every smuggled code (marker file or token in the log) that ran and was not allowed."""
    ran = {p.name for p in (place / "markers").iterdir()} | set(_TOKENS.findall(service.log()))
    return ran - ALLOWED


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
    # Importing these sibling modules runs their code: the service must never import them.
    # ``ran`` is the same code, allowed (``--allow``): the positive control.
    for name in ("sidecar", "__main__", "ran"):
        (path / PROBE / f"{name}.py").write_text(
            Code(path, name).source + "\n\ndef f(row):\n    return row\n")
    write_sklearn_model(path / "roots" / "trusted" / "model.pkl")
    return path


@pytest.fixture(scope="module")
def service(place):
    pythonpath = os.pathsep.join(p for p in (str(place), os.environ.get("PYTHONPATH")) if p)
    svc = Service("--port", "0", "--allow", f"{PROBE}.features.*",
                  "--allow", f"{PROBE}.ran.*",  # the positive control's module
                  "--model-root", str(place / "roots" / "data"),
                  "--trusted-model-root", str(place / "roots" / "trusted"),
                  "--inspect-timeout", "6", "--inspect-cpu-seconds", "4",
                  "--inspect-memory-mb", "1024",
                  log_path=place / "service.log", env={"PYTHONPATH": pythonpath})
    yield svc
    svc.stop()




@pytest.fixture(autouse=True)
def still_serving(request, place):
    """After every test: the service runs, answers health, and no smuggled code ran (no marker
    file, no token in the service log) but the positive controls'."""
    yield
    if "service" not in request.fixturenames:
        return
    svc = request.getfixturevalue("service")
    if svc.proc.poll() is None:
        assert healthy(request.getfixturevalue("channel"))
    assert not code_that_ran(place, svc), "code ran in the service or an inspector"


@pytest.fixture
def code(place) -> Code:
    return Code(place)


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


def check_the_checks(channel, service, place: Path) -> None:
    """Positive controls for ``Code.ran`` and the after-test check: the same code, run where it
    may run, is seen, in each place code could run.

    1. In the service process: ``PROBE.ran`` (``sidecar.py``'s code, allowlisted) is imported
       by the service: its marker file appears, and its token is in the log.
    2. In an inspector: a code pickle (as the untrusted-root tests send) in the trusted root
       runs there. No marker file can appear, so the old check was blind: the token tells.
    3. Each form a request smuggles code in (Beam's pickler, a pickled coder, a callable's
       source, a shell command), decoded here in the test process as stock Beam would, runs.
    """
    import subprocess

    from apache_beam.coders.coders import deserialize_coder
    from apache_beam.internal import pickler
    from apache_beam.utils.python_callable import PythonCallableWithSource
    from google.protobuf import wrappers_pb2

    from tests._security_helpers import code_pickle, wait_until
    from tests._service_helpers import expansion_request, pickled_bytes, pickled_coder

    trusted = place / "roots" / "trusted"
    in_service = Code(place, "ran").allow()
    assert not in_service.ran(service)
    response = expand(channel, expansion_request(inference(
        model_uri=str(trusted / "model.pkl"), preprocess=f"{PROBE}.ran:f", feature_field=None)))
    assert response.error == "", response.error
    assert in_service.marker.exists(), "the marker file does not see code run in the service"
    assert wait_until(lambda: in_service.token in service.log(), 10)

    in_inspector = Code(place).allow()
    model = code_pickle(trusted / f"{in_inspector.id}.pkl", in_inspector.source)
    expand(channel, expansion_request(inference(model_uri=str(model))))
    assert wait_until(lambda: in_inspector.ran(service), 10), \
        "the log token does not see code run in an inspector"
    assert f"said: '{in_inspector.token}'" in service.log()
    assert not in_inspector.marker.exists()  # why the marker file alone was not enough

    forms = {
        "pickler": lambda c: pickler.loads(pickled_bytes(c.pickled())),
        "pickled coder": lambda c: deserialize_coder(wrappers_pb2.BytesValue.FromString(
            pickled_coder(c.pickled()).spec.payload).value),
        "callable source": lambda c: PythonCallableWithSource(c.callable_source),
        "shell": lambda c: subprocess.run(c.shell, shell=True, check=True,
                                          capture_output=True),
    }
    for form, decode in forms.items():
        armed = Code(place).allow()
        try:
            decode(armed)
        except Exception:  # noqa: BLE001 - it ran, or it did not: the marker says which
            pass
        assert armed.ran(service), f"{form}: the smuggled code does not run where decoded"
