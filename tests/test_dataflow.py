"""The Java example on Beam's real DataflowRunner, submitting to a local stand-in for the Dataflow
API (tests/_dataflow_standin.py): what the runner sends is what Dataflow would get. The model is
a ``gs://`` object (a stand-in Cloud Storage serves it to the expansion service), as on GCP.
And what CrossInference refuses while the pipeline is built, before anything is submitted."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2

from tests._dataflow_standin import DataflowApi, Gcs, compile_stager, stop_java
from tests._java import EXAMPLES_CLASSPATH, classpath, java_env, run_java
from tests._service_helpers import write_sklearn_model

pytestmark = pytest.mark.java

CLASSIFY = "io.crossinfer.examples.ClassifyRows"
IMAGE = "us-docker.pkg.dev/standin-project/repo/crossinfer-worker:test"
MODEL = "gs://standin-models/sklearn/model.pkl"


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


def check_submitted_job(job: dict[str, Any], proto: beam_runner_api_pb2.Pipeline) -> None:
    """Runner v2, the Python stages in a DOCKER environment with IMAGE, crossinfer's stages."""
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
    assert any(n.startswith("Read") for n in java) and not any("RunInference" in n for n in java)


@pytest.fixture
def standins(tmp_path):
    api, gcs = DataflowApi(), Gcs()
    model = write_sklearn_model(tmp_path / "model.pkl", n_features=4)
    gcs.put(MODEL, model.read_bytes())
    yield api, gcs
    api.stop()
    gcs.stop()


def test_example_submitted_to_dataflow(tmp_path, standins):
    """ClassifyRows' documented Dataflow command line, submitted: runner v2, the Python stages in
    the given image, the crossinfer stages there, and the model read from gs:// at expansion."""
    api, gcs = standins
    cp = compile_stager(classpath(EXAMPLES_CLASSPATH), tmp_path / "stager")
    stage = tmp_path / "one.txt"
    stage.write_text("a file to stage\n")
    job, err = submit(cp, CLASSIFY, [
        *api.flags(), f"--filesToStage={stage}", f"--pythonContainerImage={IMAGE}",
        "--input=gs://standin-bucket/in.jsonl", "--output=gs://standin-bucket/out",
        f"--modelUri={MODEL}", "--trustedModelRoots=gs://standin-models/sklearn/",
    ], api, java_env(**gcs.env()), tmp_path / "staged")
    assert "Traceback" not in err
    check_submitted_job(job, staged_pipeline(tmp_path / "staged"))


def _construct(tmp_path: Path, *options: str) -> subprocess.CompletedProcess:
    # No stand-in: these must fail before anything is expanded or submitted.
    return run_java(classpath(EXAMPLES_CLASSPATH), CLASSIFY, *options, "--runner=DataflowRunner",
                    "--project=my-project", "--region=us-central1", "--tempLocation=gs://b/tmp",
                    "--gcpTempLocation=gs://b/tmp", "--stagingLocation=gs://b/staging",
                    "--dataflowEndpoint=http://127.0.0.1:1/", "--input=gs://b/in.jsonl",
                    "--output=gs://b/out",
                    "--credentialFactoryClass="
                    "org.apache.beam.sdk.extensions.gcp.auth.NoopCredentialFactory",
                    "--pathValidatorClass="
                    "org.apache.beam.sdk.extensions.gcp.storage.NoopPathValidator",
                    timeout=120)


def test_dataflow_without_a_python_image_fails_at_construction(tmp_path):
    done = _construct(tmp_path, f"--modelUri={MODEL}")
    assert done.returncode != 0
    assert ("DataflowRunner runs the Python stages in containers, and no image is given for "
            "them; call withSdkContainerImage(") in done.stderr, done.stderr[-3000:]
    assert "Docker environments" not in done.stderr   # not the error Dataflow gives at submission


@pytest.mark.parametrize("uri", ["/models/model.pkl", "file:///models/model.pkl",
                                 "models/model.pkl"])
def test_dataflow_with_a_local_model_fails_at_construction(tmp_path, uri):
    done = _construct(tmp_path, f"--modelUri={uri}", f"--pythonContainerImage={IMAGE}")
    assert done.returncode != 0
    assert (f'withModelUri("{uri}") is a local path, which DataflowRunner workers cannot read'
            in done.stderr), done.stderr[-3000:]


def test_dataflow_with_local_models_fails_at_construction(tmp_path):
    done = _construct(tmp_path, "--modelKeyField=kind", f"--models=a={MODEL},b=/models/b.pkl",
                      f"--pythonContainerImage={IMAGE}")
    assert done.returncode != 0
    assert 'withModels("/models/b.pkl") is a local path' in done.stderr, done.stderr[-3000:]
