"""The Java example on Beam's real DataflowRunner, submitting to a local stand-in for the Dataflow
API (tests/_dataflow_standin.py): what the runner sends is what Dataflow would get. The model is
a ``gs://`` object (a stand-in Cloud Storage serves it to the expansion service), as on GCP.
And what CrossInference refuses while the pipeline is built, before anything is submitted."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests._dataflow_standin import (IMAGE, MODEL, check_submitted_job, compile_stager,
                                     staged_pipeline, standins, submit)
from tests._java import EXAMPLES_CLASSPATH, classpath, java_env, run_java

pytestmark = pytest.mark.java

CLASSIFY = "io.crossinfer.examples.ClassifyRows"
__all__ = ["standins"]  # the fixture


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
    check_submitted_job(job, staged_pipeline(tmp_path / "staged"), java_stage="Read")


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
