"""Local stand-ins for the Google Cloud services a DataflowRunner submission touches, so tests can
submit a real Java pipeline with Beam's real DataflowRunner and look at what it sent:

- ``DataflowApi``: the Dataflow REST API (``--dataflowEndpoint``): records each job the runner
  creates and answers that it is running.
- ``Gcs``: Cloud Storage's JSON API for reading (``STORAGE_EMULATOR_HOST``, which the Python
  client honours), so the expansion service can inspect a ``gs://`` model as it would on GCP.
- ``LocalStager`` (tests/dataflow_standin/LocalStager.java, compiled here against the program's
  classpath): a stager that uploads nothing and keeps the staged pipeline proto.
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import parse_qs, unquote, urlparse

import pytest
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2

from tests._java import REPO
from tests._service_helpers import write_sklearn_model

STAGER_SOURCE = REPO / "tests" / "dataflow_standin" / "LocalStager.java"
IMAGE = "us-docker.pkg.dev/standin-project/repo/crossinfer-worker:test"
MODEL = "gs://standin-models/sklearn/model.pkl"


class _Server:
    def __init__(self, handler: type) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.standin = self  # type: ignore[attr-defined]
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, code: int, body: bytes, ctype: str = "application/json",
              headers: Optional[dict[str, str]] = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        # Google's Java client sends chunked, gzipped JSON.
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                chunk = self.rfile.read(size + 2)[:size]
                if size == 0:
                    break
                body += chunk
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
        return body

    def _json(self, code: int, value: Any) -> None:
        self._send(code, json.dumps(value).encode())


class _DataflowHandler(_Handler):
    # POST /v1b3/projects/P/locations/R/jobs creates; GET .../jobs/ID[/messages|/metrics] polls.
    def do_POST(self) -> None:
        api: DataflowApi = self.server.standin  # type: ignore[attr-defined]
        path = urlparse(self.path).path
        body = self._body()
        if not re.fullmatch(r"/v1b3/projects/[^/]+/locations/[^/]+/jobs", path):
            return self._json(404, {"error": {"code": 404, "message": f"no {path}"}})
        job = json.loads(body)
        job.update(id=f"standin-{uuid.uuid4().hex[:8]}", currentState="JOB_STATE_RUNNING")
        with api.lock:
            api.jobs.append(job)
        self._json(200, job)

    def do_GET(self) -> None:
        api: DataflowApi = self.server.standin  # type: ignore[attr-defined]
        path = urlparse(self.path).path
        with api.lock:
            api.polls.append(path)
            jobs = {j["id"]: j for j in api.jobs}
        found = re.fullmatch(r"/v1b3/projects/[^/]+/locations/[^/]+/jobs/([^/]+)(/\w+)?", path)
        if not found or found[1] not in jobs:
            return self._json(404, {"error": {"code": 404, "message": f"no {path}"}})
        if found[2] == "/messages":
            return self._json(200, {"jobMessages": []})
        if found[2] == "/metrics":
            return self._json(200, {"metrics": []})
        job = jobs[found[1]]
        self._json(200, {"id": job["id"], "name": job.get("name"), "currentState": "JOB_STATE_RUNNING"})


class DataflowApi(_Server):
    """The Dataflow API the runner submits to; ``jobs`` holds each created job's JSON."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs: list[dict[str, Any]] = []
        self.polls: list[str] = []
        super().__init__(_DataflowHandler)

    def wait_for(self, condition: Callable[[], bool], timeout: float,
                 alive: Callable[[], bool]) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and alive():
            with self.lock:
                if condition():
                    return True
            time.sleep(0.2)
        with self.lock:
            return condition()

    def flags(self, staging: str = "gs://standin-bucket/staging") -> list[str]:
        """What a DataflowRunner submission to this stand-in needs, besides the stager."""
        return ["--runner=DataflowRunner", "--project=standin-project", "--region=us-central1",
                f"--dataflowEndpoint={self.url}/", "--tempLocation=gs://standin-bucket/tmp",
                "--gcpTempLocation=gs://standin-bucket/tmp",
                f"--stagingLocation={staging}",
                "--credentialFactoryClass="
                "org.apache.beam.sdk.extensions.gcp.auth.NoopCredentialFactory",
                "--pathValidatorClass="
                "org.apache.beam.sdk.extensions.gcp.storage.NoopPathValidator",
                "--stagerClass=standin.LocalStager", "--experiments=use_runner_v2"]


class _GcsHandler(_Handler):
    def do_GET(self) -> None:
        gcs: Gcs = self.server.standin  # type: ignore[attr-defined]
        url = urlparse(self.path)
        found = re.fullmatch(r"(?:/download)?/storage/v1/b/([^/]+)(?:/o/(.+))?", url.path)
        if not found:
            return self._json(404, {"error": {"code": 404, "message": "Not Found"}})
        if found[2] is None:
            return self._json(200, {"kind": "storage#bucket", "name": found[1], "id": found[1]})
        name = unquote(found[2])
        data = gcs.objects.get((found[1], name))
        if data is None:
            return self._json(404, {"error": {"code": 404, "message": "No such object"}})
        if parse_qs(url.query).get("alt") == ["media"]:
            ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            if ranged:
                start = int(ranged[1])
                end = min(int(ranged[2]) if ranged[2] else len(data) - 1, len(data) - 1)
                return self._send(206, data[start:end + 1], "application/octet-stream",
                                  {"Content-Range": f"bytes {start}-{end}/{len(data)}"})
            return self._send(200, data, "application/octet-stream")
        self._json(200, {"kind": "storage#object", "bucket": found[1], "name": name,
                         "size": str(len(data)), "generation": "1", "metageneration": "1",
                         "contentType": "application/octet-stream",
                         "timeCreated": "2026-01-01T00:00:00.000Z",
                         "updated": "2026-01-01T00:00:00.000Z"})


class Gcs(_Server):
    """Read-only Cloud Storage holding ``objects[(bucket, name)] = bytes``."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        super().__init__(_GcsHandler)

    def put(self, uri: str, data: bytes) -> None:
        bucket, _, name = uri.removeprefix("gs://").partition("/")
        self.objects[(bucket, name)] = data

    def env(self) -> dict[str, str]:
        """For the Python processes that read gs:// (google-auth must not probe for GCE)."""
        return {"STORAGE_EMULATOR_HOST": self.url, "NO_GCE_CHECK": "True"}


def compile_stager(cp: str, out: Path) -> str:
    """Compiles LocalStager against ``cp`` into ``out``; returns the classpath with it first."""
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["javac", "-nowarn", "-d", str(out), "-cp", cp, str(STAGER_SOURCE)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return f"{out}:{cp}"


def stop_java(proc: subprocess.Popen) -> tuple[str, str]:
    """Ends a Java program that waits on its (stand-in) job, with SIGTERM so that its shutdown
    hooks stop the expansion service it started; returns its stdout and stderr."""
    if proc.poll() is None:
        proc.terminate()
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return out, err


@pytest.fixture
def standins(tmp_path):
    """A Dataflow API and a Cloud Storage holding a scikit-learn model at MODEL."""
    api, gcs = DataflowApi(), Gcs()
    model = write_sklearn_model(tmp_path / "model.pkl", n_features=4)
    gcs.put(MODEL, model.read_bytes())
    yield api, gcs
    api.stop()
    gcs.stop()


def submit(cp: str, main: str, args: list[str], api: DataflowApi, env: dict[str, str],
           staged: Path, timeout: float = 420) -> tuple[dict[str, Any], str]:
    """Runs ``main`` until the runner has created its job and polls it; returns the job's JSON
    and the program's stderr."""
    proc = subprocess.Popen(["java", "-cp", cp, main, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**env, "STANDIN_STAGED": str(staged)})
    try:
        # Submitted, and the runner now waits on the job (it asks for the job's state).
        api.wait_for(lambda: bool(api.jobs) and any(p.endswith(api.jobs[0]["id"])
                                                    for p in api.polls),
                     timeout, alive=lambda: proc.poll() is None)
    finally:
        _, err = stop_java(proc)
    assert api.jobs, err[-5000:]
    return api.jobs[0], err


def staged_pipeline(staged: Path) -> beam_runner_api_pb2.Pipeline:
    [path] = [p for p in staged.iterdir() if p.name.startswith("pipeline")]
    return beam_runner_api_pb2.Pipeline.FromString(path.read_bytes())


def check_submitted_job(job: dict[str, Any], proto: beam_runner_api_pb2.Pipeline,
                        java_stage: str) -> None:
    """Runner v2, the Python stages in a DOCKER environment with IMAGE, crossinfer's stages
    there, and the Java stages (one named ``java_stage...``) in Beam's Java image."""
    experiments = job["environment"]["experiments"]
    assert "use_runner_v2" in experiments and "beam_fn_api" in experiments, experiments
    [pool] = job["environment"]["workerPools"]
    images = {i["environmentId"]: i["containerImage"] for i in pool["sdkHarnessContainerImages"]}
    docker = common_urns.environments.DOCKER.urn
    envs = proto.components.environments
    python = [k for k, e in envs.items() if e.urn == docker and
              beam_runner_api_pb2.DockerPayload.FromString(e.payload).container_image == IMAGE]
    assert len(python) == 1, {k: e.urn for k, e in envs.items()}
    assert images[python[0]] == IMAGE, images
    # Every transform that runs in a non-Docker environment would make Dataflow refuse the job.
    used = {t.environment_id for t in proto.components.transforms.values() if t.environment_id}
    assert all(envs[e].urn == docker for e in used), {e: envs[e].urn for e in used}
    in_python = [t.unique_name for t in proto.components.transforms.values()
                 if t.environment_id == python[0]]
    for stage in ("Inference(sklearn)/RunInference", "Inference(sklearn)/Postprocess",
                  "Inference(sklearn)/Failures"):
        assert any(n.endswith(stage) for n in in_python), (stage, in_python)
    java = [t.unique_name for t in proto.components.transforms.values()
            if t.environment_id and t.environment_id != python[0]]
    assert any(n.startswith(java_stage) for n in java), java
    assert not any("RunInference" in n for n in java), java
    java_images = {images[t.environment_id] for t in proto.components.transforms.values()
                   if t.environment_id and t.environment_id != python[0]}
    assert all("beam_java" in i for i in java_images), java_images
