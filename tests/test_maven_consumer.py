"""A Java team's own Maven project (tests/maven_consumer) that declares io.crossinfer:crossinfer
next to Beam at its own version, built offline against what `gradle publishToMavenLocal`
installed (and what scripts/setup.sh fetched):

- on Beam 2.65.0 with the PortableRunner, it runs a pipeline on the local stack, with an
  expansion service CrossInference starts itself;
- on Beam 2.68.0 with the Dataflow runner, it builds, expands and submits the pipeline to a
  stand-in Dataflow API: crossinfer's POM brings no Beam version of its own;
- with Beam 2.68.0 and a PortableRunner of 2.65.0, it fails at construction, in seconds, naming
  both versions (not a NoClassDefFoundError inside the runner and a hang).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

from tests._dataflow_standin import (IMAGE, MODEL, check_submitted_job, compile_stager,
                                     staged_pipeline, standins, submit)
from tests._java import REPO, JobServer, java_env
from tests._service_helpers import write_sklearn_model

pytestmark = pytest.mark.java
__all__ = ["standins"]  # the fixture

VERSION = re.search(r'^version = "(.+)"$', (REPO / "pyproject.toml").read_text(), re.M)[1]
M2 = Path.home() / ".m2" / "repository" / "io" / "crossinfer" / "crossinfer" / VERSION
POM = "{http://maven.apache.org/POM/4.0.0}"


def _build(tmp_path: Path, *flags: str) -> tuple[Path, list[str]]:
    """The consumer project built with ``flags``: its directory and runtime classpath."""
    if shutil.which("mvn") is None or not (M2 / f"crossinfer-{VERSION}.pom").exists():
        pytest.fail("Maven or the published artifact is missing: run `bash scripts/setup.sh` "
                    "(gradle publishToMavenLocal, and Maven's plugins fetched once)")
    project = tmp_path / "consumer"
    shutil.copytree(REPO / "tests" / "maven_consumer", project,
                    ignore=shutil.ignore_patterns("target"))
    done = subprocess.run(
        ["mvn", "-o", "-q", "-B", "package", "dependency:build-classpath", *flags,
         f"-Dcrossinfer.version={VERSION}", "-Dmdep.outputFile=target/classpath.txt"],
        cwd=project, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    deps = (project / "target" / "classpath.txt").read_text().strip().split(":")
    return project, [str(project / "target" / "classes"), *deps]


def _beam_versions(cp: list[str]) -> dict[str, str]:
    """Beam artifact -> version, from the jar names (Beam's vendored jars have their own)."""
    found = {}
    for name in (Path(d).name for d in cp):
        m = re.fullmatch(r"(beam-(?!vendor-).+)-(\d+\.\d+\.\d+)\.jar", name)
        if m:
            found[m[1]] = m[2]
    return found


def test_the_published_pom_leaves_beam_to_the_user():
    """Every Beam artifact in crossinfer's POM is "provided" (not transitive): the project's own
    Beam version is the only one; jamm (for Beam's Java worker) comes along at run time."""
    if not (M2 / f"crossinfer-{VERSION}.pom").exists():
        pytest.fail("the published artifact is missing: run `bash scripts/setup.sh`")
    deps = ET.parse(M2 / f"crossinfer-{VERSION}.pom").getroot().iter(f"{POM}dependency")
    scopes = {d.findtext(f"{POM}artifactId"): (d.findtext(f"{POM}groupId"),
                                                d.findtext(f"{POM}scope")) for d in deps}
    beam = {a: s for a, (g, s) in scopes.items() if g == "org.apache.beam"}
    assert {"beam-sdks-java-core", "beam-sdks-java-extensions-python"} <= set(beam), scopes
    assert set(beam.values()) == {"provided"}, beam
    assert scopes["jamm"] == ("com.github.jbellis", "runtime")
    with zipfile.ZipFile(M2 / f"crossinfer-{VERSION}.jar") as jar:
        files = jar.namelist()
    assert not [f for f in files if re.search(r"(log4j|logback|simplelogger)", f)], files
    assert not [f for f in files if "/examples/" in f], files
    for extra in ("sources", "javadoc"):
        assert (M2 / f"crossinfer-{VERSION}-{extra}.jar").exists()


def test_consumer_on_beam_2_65_runs_locally(tmp_path):
    project, cp = _build(tmp_path, "-Pportable")
    names = [Path(d).name for d in cp]
    assert set(_beam_versions(cp).values()) == {"2.65.0"}, _beam_versions(cp)
    for needed in ("beam-runners-portability-java-2.65.0.jar", "jamm-0.4.0.jar",
                   f"crossinfer-{VERSION}.jar"):
        assert needed in names, needed
    # Nothing the application should choose itself.
    assert not [n for n in names if re.match(r"(slf4j-(simple|reload4j|jdk14|log4j12)|logback-)", n)]

    model = write_sklearn_model(tmp_path / "model.pkl", n_features=4)
    server = JobServer(tmp_path)
    try:
        done = subprocess.run(
            ["java", "-cp", ":".join(cp), "com.example.Predict", str(model),
             str(tmp_path / "out"), *server.flags()],
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


def test_consumer_on_beam_2_68_submits_to_dataflow(tmp_path, standins):
    api, gcs = standins
    project, cp = _build(tmp_path, "-Pdataflow", "-Dbeam.version=2.68.0")
    versions = _beam_versions(cp)
    assert set(versions.values()) == {"2.68.0"}, versions
    assert "beam-runners-google-cloud-dataflow-java" in versions
    cp = compile_stager(":".join(cp), tmp_path / "stager").split(":")
    stage = tmp_path / "one.txt"
    stage.write_text("a file to stage\n")
    job, err = submit(":".join(cp), "com.example.Predict", [
        MODEL, "gs://standin-bucket/out", *api.flags(), f"--filesToStage={stage}",
        f"--pythonImage={IMAGE}"], api, java_env(**gcs.env()), tmp_path / "staged")
    assert "Traceback" not in err
    check_submitted_job(job, staged_pipeline(tmp_path / "staged"), java_stage="Create.Values")


def test_mixed_beam_versions_fail_at_construction(tmp_path):
    # Beam 2.68 core and Python extension, and the PortableRunner of 2.65: issue 18's mix.
    project, cp = _build(tmp_path, "-Pportable", "-Dbeam.version=2.68.0",
                         "-Dportable.runner.version=2.65.0")
    versions = _beam_versions(cp)
    assert versions["beam-sdks-java-core"] == "2.68.0"
    assert versions["beam-runners-portability-java"] == "2.65.0"
    model = write_sklearn_model(tmp_path / "model.pkl", n_features=4)
    start = time.monotonic()
    # Nothing listens at the job endpoint: the pipeline must fail before it is run.
    done = subprocess.run(
        ["java", "-cp", ":".join(cp), "com.example.Predict", str(model), str(tmp_path / "out"),
         "--runner=PortableRunner", "--jobEndpoint=localhost:1"],
        capture_output=True, text=True, timeout=120, env=java_env())
    elapsed = time.monotonic() - start
    assert done.returncode != 0
    err = done.stderr
    # At construction: CrossInference.apply refuses, before anything is expanded or run. That is
    # what bounds the time (~4-10 s here, JVM start included, depending on the machine's load;
    # the margin is for a loaded CI machine; the mix used to hang until killed).
    assert "at io.crossinfer.CrossInference.expand" in err, err[-3000:]
    assert "PortableRunner" not in err.split("IllegalStateException", 1)[-1], err[-3000:]
    assert elapsed < 30, elapsed
    assert "the Beam Java jars on the classpath are of different versions" in err, err[-3000:]
    assert re.search(r"2\.65\.0: [^;]*beam-runners-portability-java", err), err[-3000:]
    assert re.search(r"2\.68\.0: [^;]*beam-sdks-java-core", err), err[-3000:]
    assert re.search(r"declare [^;]*beam-runners-portability-java[^;]* at 2\.68\.0", err)
    assert not (tmp_path / "out-predictions.jsonl").exists()


def _readme_block(lang: str, marker: str) -> str:
    blocks = re.findall(rf"```{lang}\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    [block] = [b for b in blocks if marker in b]
    return re.sub(r"^   ", "", block, flags=re.M)


def test_readme_maven_snippet_is_the_tested_project():
    """README's Maven dependencies are the consumer project's (base + the portable profile)."""
    readme = ET.fromstring(f"<project>{_readme_block('xml', 'beam.version')}</project>")
    declared = {(d.findtext("groupId"), d.findtext("artifactId"), d.findtext("version"))
                for d in readme.iter("dependency")}
    pom = ET.parse(REPO / "tests" / "maven_consumer" / "pom.xml").getroot()
    portable = [p for p in pom.iter(f"{POM}profile") if p.findtext(f"{POM}id") == "portable"][0]
    tested = {(d.findtext(f"{POM}groupId"), d.findtext(f"{POM}artifactId"),
               d.findtext(f"{POM}version").replace("${portable.runner.version}", "${beam.version}")
               .replace("${crossinfer.version}", VERSION))
              for d in [*pom.find(f"{POM}dependencies"), *portable.iter(f"{POM}dependency")]}
    assert declared == tested
    assert readme.findtext("properties/beam.version") == \
        pom.findtext(f"{POM}properties/{POM}beam.version")


def test_readme_gradle_snippet_resolves_one_beam_version(tmp_path):
    """README's Gradle dependencies, resolved by Gradle (offline, from what the build fetched):
    crossinfer, jamm, and Beam at the one version the snippet names."""
    (tmp_path / "settings.gradle").write_text("rootProject.name = 'consumer'\n")
    (tmp_path / "build.gradle").write_text(
        "apply plugin: 'java'\n" + _readme_block("groovy", "beamVersion"))
    done = subprocess.run(["gradle", "--offline", "-q", "--console=plain", "dependencies",
                           "--configuration", "runtimeClasspath"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "FAILED" not in done.stdout, done.stdout + done.stderr
    resolved = set(re.findall(r"--- ([\w.-]+:[\w.-]+):(?:[\w.]+ -> )?([\w.-]+)", done.stdout))
    beam = {v for a, v in resolved if a.startswith("org.apache.beam:beam-")
            and "vendor" not in a}
    assert beam == {"2.65.0"}, resolved
    assert ("io.crossinfer:crossinfer", VERSION) in resolved
    assert ("com.github.jbellis:jamm", "0.4.0") in resolved
    assert ("org.apache.beam:beam-runners-portability-java", "2.65.0") in resolved
