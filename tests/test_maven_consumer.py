"""A Java team's own Maven project (tests/maven_consumer) that declares only
io.crossinfer:crossinfer, built offline against what `gradle publishToMavenLocal` installed,
runs a pipeline on the local stack with an expansion service CrossInference starts itself."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests._java import REPO, JobServer, java_env
from tests._service_helpers import write_sklearn_model

pytestmark = pytest.mark.java

VERSION = re.search(r'^version = "(.+)"$', (REPO / "pyproject.toml").read_text(), re.M)[1]
M2 = Path.home() / ".m2" / "repository" / "io" / "crossinfer" / "crossinfer" / VERSION


def _build(project: Path) -> list[str]:
    if shutil.which("mvn") is None or not (M2 / f"crossinfer-{VERSION}.pom").exists():
        pytest.fail("Maven or the published artifact is missing: run `bash scripts/setup.sh` "
                    "(gradle publishToMavenLocal, and Maven's plugins fetched once)")
    done = subprocess.run(
        ["mvn", "-o", "-q", "-B", "package", "dependency:build-classpath",
         f"-Dcrossinfer.version={VERSION}", "-Dmdep.outputFile=target/classpath.txt"],
        cwd=project, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return (project / "target" / "classpath.txt").read_text().strip().split(":")


def test_the_published_artifact_is_all_a_maven_project_needs(tmp_path):
    project = tmp_path / "consumer"
    shutil.copytree(REPO / "tests" / "maven_consumer", project,
                    ignore=shutil.ignore_patterns("target"))
    deps = _build(project)
    names = [Path(d).name for d in deps]
    # What a pipeline needs at run time comes with the one dependency...
    for needed in ("beam-sdks-java-core-2.65.0.jar", "beam-sdks-java-extensions-python-2.65.0.jar",
                   "beam-runners-portability-java-2.65.0.jar", "jamm-0.4.0.jar",
                   f"crossinfer-{VERSION}.jar"):
        assert needed in names, needed
    # ...and nothing the application should choose itself.
    assert not [n for n in names if re.match(r"(slf4j-(simple|reload4j|jdk14|log4j12)|logback-)", n)]
    with zipfile.ZipFile(M2 / f"crossinfer-{VERSION}.jar") as jar:
        files = jar.namelist()
    assert not [f for f in files if re.search(r"(log4j|logback|simplelogger)", f)], files
    assert not [f for f in files if "/examples/" in f], files
    for extra in ("sources", "javadoc"):
        assert (M2 / f"crossinfer-{VERSION}-{extra}.jar").exists()

    model = write_sklearn_model(tmp_path / "model.pkl", n_features=4)
    server = JobServer(tmp_path)
    try:
        done = subprocess.run(
            ["java", "-cp", ":".join([str(project / "target" / "classes"), *deps]),
             "com.example.Predict", str(model), str(tmp_path / "out"), *server.flags()],
            capture_output=True, text=True, timeout=600, env=java_env())
    finally:
        server.stop()
    assert done.returncode == 0 and "state=DONE" in done.stdout, done.stderr[-5000:]
    read = lambda n: [json.loads(l) for l in (tmp_path / f"out-{n}.jsonl").read_text()
                      .splitlines() if l.strip()]
    predictions = {p["id"]: p for p in read("predictions")}
    assert sorted(predictions) == list(range(8))
    for i, p in predictions.items():
        assert p["label"] == (1 if i % 2 == 0 else 0)   # the model: feature 0 > 0
        assert p["model_id"] == str(model)
    [failure] = read("failures")
    assert json.loads(failure["element"])["id"] == 99 and "is null" in failure["error"]
