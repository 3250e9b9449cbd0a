"""Real Java pipelines get predictions from Python: the Java programs on Beam's PortableRunner
against Beam's Python job server, with the expansion service CrossInference starts by itself
(only `--runner=PortableRunner --jobEndpoint=...` is passed). Each Java prediction must equal
the Python side's for the same rows, and every input row must come back.

Each pipeline run costs ~15-20 s of fixed job-server time, so several cases share one run.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests import models
from tests._java import (EXAMPLES_CLASSPATH, EXAMPLES_TEST_CLASSPATH, REPO, JobServer,
                         PrismJobServer, classpath, java_env, run_java)
from tests._service_helpers import Service
from tests.conftest import run

pytestmark = pytest.mark.java

CLASSIFY = "io.crossinfer.examples.ClassifyRows"


@pytest.fixture(scope="module")
def job_server(tmp_path_factory):
    server = JobServer(tmp_path_factory.mktemp("job_server"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def prism(tmp_path_factory):
    server = PrismJobServer(tmp_path_factory.mktemp("prism"))
    yield server
    server.stop()


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def _pids_with(marker: str) -> list[int]:
    """Processes whose environment holds ``marker`` (children of one Java run)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{entry}/environ").read_bytes():
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def _classify(job_server, tmp: Path, lines: list[str], *options: str, env=None):
    src = tmp / "input.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out = tmp / "out"
    # The tests' models are files they made themselves: their directories are trusted roots.
    roots = [f"--trustedModelRoots={Path(o.split('=', 1)[1]).parent}"
             for o in options if o.startswith("--modelUri=")]
    done = run_java(classpath(EXAMPLES_CLASSPATH), CLASSIFY, f"--input={src}",
                    f"--output={out}", *job_server.flags(), *roots, *options, env=env)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-6000:])
    return _read(Path(f"{out}-predictions.jsonl")), _read(Path(f"{out}-failures.jsonl")), done


def _python_predictions(x, **kwargs) -> dict[int, Any]:
    rows = [beam.Row(id=i, features=[float(v) for v in row]) for i, row in enumerate(x)]
    preds, fails = run(rows, feature_field="features", passthrough_fields=["id"], **kwargs)
    assert not fails
    return {p.id: p for p in preds}


def _feature_lines(x) -> list[str]:
    good = [json.dumps({"id": i, "features": [float(v) for v in row], "comment": "unused"})
            for i, row in enumerate(x)]
    bad = [json.dumps({"id": 900, "features": None}),                      # model side
           json.dumps({"id": 901, "features": [0.5] * (models.N_FEATURES - 1)}),  # model side
           json.dumps({"id": 902, "features": [1.0, "two", 3.0]}),          # JsonToRow
           "{this is not json"]                                              # JsonToRow
    return good + bad


def _check_same_as_python(java_preds, python, n_good):
    assert {p["id"] for p in java_preds} == set(range(n_good))
    for p in java_preds:
        want = python[p["id"]]
        assert p["label"] == want.label
        assert p["score"] == pytest.approx(want.score, rel=1e-6)
        assert p["model_id"] == want.model_id


def _check_bad_rows(java_fails):
    by_stage: dict[str, list] = {}
    for f in java_fails:
        by_stage.setdefault(f["stage"], []).append(f)
    assert sorted(by_stage) == ["parse", "preprocess"], java_fails
    assert {json.loads(f["element"])["id"] for f in by_stage["preprocess"]} == {900, 901}
    errors = " | ".join(f["error"] for f in by_stage["preprocess"])
    assert "is null" in errors and "takes exactly 8" in errors
    parsed = sorted(f["element"] for f in by_stage["parse"])
    assert parsed == ['{"id": 902, "features": [1.0, "two", 3.0]}', "{this is not json"]
    assert all(f["error"].startswith("ParseError: ") for f in by_stage["parse"])


@pytest.mark.parametrize("runner", [pytest.param("prism", marks=pytest.mark.prism), "job_server"])
def test_sklearn_with_nothing_started_by_hand(runner, request, tmp_path, sklearn_model):
    """Zero setup, on Prism and on Beam's Python job server: no service address, no
    environment flags; the started service is stopped when the JVM exits."""
    job_server = request.getfixturevalue(runner)
    path, _ = sklearn_model
    x, _ = models.dataset(n=200, seed=41)
    marker = f"CROSSINFER_TEST_RUN={uuid.uuid4()}"
    env = java_env(CROSSINFER_TEST_RUN=marker.split("=", 1)[1],
                   XDG_CACHE_HOME=str(tmp_path / "cache"))
    preds, fails, done = _classify(job_server, tmp_path, _feature_lines(x),
                                   f"--modelUri={path}", env=env)
    _check_same_as_python(preds, _python_predictions(x, framework="sklearn",
                                                     model_uri=str(path)), 200)
    _check_bad_rows(fails)
    assert "predictions=200 failures=4" in done.stdout
    assert _pids_with(marker) == [], "the auto-started expansion service outlived the JVM"
    # The service's log is printed at start and still there after the JVM exited.
    logs = re.findall(r"crossinfer: expansion service log: (\S+)", done.stderr)
    assert len(logs) == 1, done.stderr[-3000:]
    log = Path(logs[0])
    assert log.parent == tmp_path / "cache" / "crossinfer" / "logs"
    assert "ready in" in log.read_text()


@pytest.mark.prism
def test_a_kept_service_serves_the_next_jvm_and_exits_once_unused(prism, tmp_path,
                                                                 sklearn_model):
    """CROSSINFER_KEEP_SERVICE: the first JVM's service outlives it; the next JVM with the same
    settings uses it (no Python of its own); unused for the keep time, it exits cleanly and
    removes its state file."""
    path, _ = sklearn_model
    x, _ = models.dataset(n=50, seed=43)
    cache = tmp_path / "cache"
    started = []
    for i in range(2):
        marker = str(uuid.uuid4())
        env = java_env(CROSSINFER_TEST_RUN=marker, CROSSINFER_KEEP_SERVICE="15",
                       XDG_CACHE_HOME=str(cache))
        (tmp_path / f"run{i}").mkdir()
        _, _, done = _classify(prism, tmp_path / f"run{i}", _feature_lines(x),
                               f"--modelUri={path}", env=env)
        assert "predictions=50 failures=4" in done.stdout
        started.append(_pids_with(marker))
    (state,) = (cache / "crossinfer" / "services").glob("*.json")
    kept = json.loads(state.read_text())["pid"]
    # The second run succeeded and started no process of its own: the kept one served it.
    assert kept in started[0] and started[1] == [], started
    log = state.with_suffix(".log").read_text()
    assert log.count("constructor='crossinfer.Inference' outcome=ok") == 2, log[-3000:]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and os.path.exists(f"/proc/{kept}"):
        time.sleep(0.5)
    assert not os.path.exists(f"/proc/{kept}"), "the kept service did not exit once unused"
    assert not state.exists()
    assert "unused for 15 s: exiting" in state.with_suffix(".log").read_text()


def test_torchscript(job_server, tmp_path, mlp_model):
    _, mlp = mlp_model
    path = tmp_path / "mlp.ts.pt"
    models.export_torchscript(mlp, path)
    x, _ = models.dataset(n=120, seed=43)
    preds, fails, _ = _classify(job_server, tmp_path, _feature_lines(x), "--framework=pytorch",
                                f"--modelUri={path}")
    _check_same_as_python(preds, _python_predictions(x, framework="pytorch",
                                                     model_uri=str(path)), 120)
    _check_bad_rows(fails)


@pytest.mark.prism
def test_onnx_variable_length_token_ids_on_prism(prism, tmp_path, sequence_model):
    """An ONNX model from Java on Prism (the runner once failed such a job decoding the Python
    stage's batch-size distribution)."""
    job_server = prism
    _, model = sequence_model
    path = tmp_path / "seq.onnx"
    models.export_onnx(model, path, torch.ones(2, 5, dtype=torch.int64), dynamic_length=True)
    seqs = models.token_sequences(n=60, seed=5)
    lines = [json.dumps({"id": i, "tokens": [int(t) for t in s]}) for i, s in enumerate(seqs)]
    lines.append(json.dumps({"id": 999, "tokens": [1, 2.5]}))  # not a token id: never rounded
    preds, fails, _ = _classify(job_server, tmp_path, lines, "--framework=onnx",
                                f"--modelUri={path}", "--featureField=tokens",
                                "--featureType=int64", "--postprocess=raw")
    assert len(preds) == 60 and [f["stage"] for f in fails] == ["parse"]
    session = ort.InferenceSession(str(path))
    for p in preds:
        alone = session.run(None, {"x": seqs[p["id"]][None, :]})[0][0]
        np.testing.assert_allclose(p["output"], alone, rtol=1e-5, atol=1e-6)


def test_models_blocks_postprocess_and_state_dict_in_one_java_job(job_server, tmp_path,
                                                                   mlp_model):
    """EndToEnd: withModels (and an unused column that must not cross), withBlocks with a
    batch cap, a custom postprocess whose output fields keep their declared order, a state_dict
    with model parameters."""
    model_a, model_b = tmp_path / "a.pkl", tmp_path / "b.pkl"
    sk_a, sk_b = models.train_sklearn(model_a, seed=1), models.train_sklearn(model_b, seed=2)
    state_dict, mlp = mlp_model
    x, _ = models.dataset(n=95, seed=44)
    rows = tmp_path / "rows.csv"
    rows.write_text("\n".join(",".join(repr(float(v)) for v in r) for r in x) + "\n")
    out = tmp_path / "e2e"
    done = run_java(classpath(EXAMPLES_TEST_CLASSPATH), "io.crossinfer.examples.EndToEnd",
                    str(out), str(rows), str(model_a), str(model_b), str(state_dict),
                    *job_server.flags())
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-6000:])
    read = lambda name, kind: _read(Path(f"{out}-{name}-{kind}.jsonl"))
    schemas = dict(line.split(" ", 1) for line in Path(f"{out}-schemas.txt").read_text()
                   .splitlines())

    # Several models: even rows by model a, odd by b; the unknown key is a failure.
    keyed = read("keyed", "predictions")
    assert sorted(p["id"] for p in keyed) == list(range(95))
    for p in keyed:
        model, uri = (sk_a, model_a) if p["id"] % 2 == 0 else (sk_b, model_b)
        proba = model.predict_proba(x[p["id"]][None, :].astype(np.float64))[0]
        assert p["label"] == int(proba.argmax())
        assert p["score"] == pytest.approx(float(proba.max()), rel=1e-5)
        assert p["model_id"] == str(uri)
    [unknown] = read("keyed", "failures")
    element = json.loads(unknown["element"])
    assert element["id"] == 9999 and "zzz" in unknown["error"]
    assert "comment" not in element, "a column Python does not read crossed the boundary"

    # Blocks: 10 blocks (the last of 5 rows), each one prediction row with array fields.
    blocks = read("blocks", "predictions")
    assert read("blocks", "failures") == []
    assert sorted(len(b["id"]) for b in blocks) == [5] + [10] * 9
    labels = {i: l for b in blocks for i, l in zip(b["id"], b["label"])}
    assert labels == {i: int(v) for i, v in enumerate(sk_a.predict(x.astype(np.float64)))}

    # Custom postprocess: fields in the declared order (top before name), not sorted.
    fields = schemas["postprocess"].split(",")
    assert fields.index("top") < fields.index("name"), fields
    post = read("postprocess", "predictions")
    assert len(post) == 95 and read("postprocess", "failures") == []
    python_rows = [beam.Row(id=i, features=[float(v) for v in r]) for i, r in enumerate(x)]
    want, _ = run(python_rows, framework="sklearn", model_uri=str(model_a),
                  feature_field="features", passthrough_fields=["id"],
                  postprocess="tests.models:label_name",
                  output_schema={"top": "float64", "name": "string"})
    want = {w.id: w for w in want}
    for p in post:
        assert p["top"] == pytest.approx(want[p["id"]].top, rel=1e-6)
        assert p["name"] == want[p["id"]].name

    # state_dict with model_class and model_params from Java.
    sd = read("statedict", "predictions")
    with torch.no_grad():
        logits = mlp(torch.from_numpy(x)).numpy()
    assert len(sd) == 95
    for p in sd:
        assert p["label"] == int(logits[p["id"]].argmax())


def test_bad_configuration_fails_at_construction(job_server, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": 1, "features": [1.0]}\n')
    done = run_java(classpath(EXAMPLES_CLASSPATH), CLASSIFY, f"--input={src}",
                    f"--output={tmp_path / 'out'}", *job_server.flags(),
                    f"--modelUri={tmp_path / 'missing.pkl'}", f"--trustedModelRoots={tmp_path}",
                    timeout=300)
    assert done.returncode != 0
    assert "ModelLoadError" in done.stderr and "does not exist" in done.stderr
    assert not (tmp_path / "out-predictions.jsonl").exists()


@pytest.fixture(scope="module")
def listener():
    """A port that accepts connections and serves nothing: for runs that must fail before
    they submit a job (CrossInference refuses a job endpoint nothing listens at)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield f"localhost:{s.getsockname()[1]}"


def _construct_only(tmp_path, env, endpoint) -> str:
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": 1, "features": [1.0]}\n')
    done = run_java(classpath(EXAMPLES_CLASSPATH), CLASSIFY, f"--input={src}",
                    f"--output={tmp_path / 'out'}", "--runner=PortableRunner",
                    f"--jobEndpoint={endpoint}", "--modelUri=/m.pkl", env=env, timeout=120,
                    cwd=tmp_path)  # a checkout's own crossinfer metadata is in the repo root
    assert done.returncode != 0
    return done.stderr


def test_a_python_without_crossinfer_gets_the_pip_command(tmp_path, listener):
    python = tmp_path / "bare-python"
    # -I -S: no PYTHONPATH, no site-packages, so no crossinfer.
    python.write_text(f"#!/bin/sh\nexec {os.path.realpath(os.sys.executable)} -I -S \"$@\"\n")
    python.chmod(0o755)
    stderr = _construct_only(tmp_path, java_env(CROSSINFER_PYTHON=str(python)), listener)
    version = re.search(r'^version = "(.+)"$', (REPO / "pyproject.toml").read_text(), re.M)[1]
    assert f"has no crossinfer" in stderr
    assert f"from the root of a crossinfer {version} checkout" in stderr
    assert f"`{python} -m pip install .`" in stderr


def test_an_unreachable_job_endpoint_fails_at_once_saying_how_to_start_one(tmp_path):
    """Nothing listens at --jobEndpoint: the pipeline fails before any service starts, within
    5 s of construction (Beam would wait minutes for DEADLINE_EXCEEDED)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": 1, "features": [1.0]}\n')
    marker = f"CROSSINFER_TEST_RUN={uuid.uuid4()}"
    started = time.monotonic()
    done = run_java(classpath(EXAMPLES_CLASSPATH), CLASSIFY, f"--input={src}",
                    f"--output={tmp_path / 'out'}", "--runner=PortableRunner",
                    f"--jobEndpoint=localhost:{port}", f"--modelUri={tmp_path / 'm.pkl'}",
                    env=java_env(CROSSINFER_TEST_RUN=marker.split("=", 1)[1]), timeout=120)
    elapsed = time.monotonic() - started
    assert done.returncode != 0
    assert f"no job server accepts connections at --jobEndpoint=localhost:{port}" in done.stderr
    assert f"--job_port={port} --serve_http=false" in done.stderr  # Prism
    assert f"local_job_service_main --port {port}" in done.stderr  # Beam's job server
    assert "crossinfer expansion service listening" not in done.stderr
    # The JVM's own start (a few seconds on a loaded machine) is not the wait being bounded.
    assert elapsed < 5 + 25, elapsed
    assert "DEADLINE_EXCEEDED" not in done.stderr


def test_an_address_that_is_not_an_expansion_service_is_named_with_the_fix(tmp_path, job_server):
    """withExpansionService at a gRPC port that serves something else (here Beam's job server):
    the pipeline fails at construction naming the address and what to start, not Beam's bare
    "UNIMPLEMENTED: unknown service"."""
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": 1, "features": [1.0]}\n')
    done = run_java(classpath(EXAMPLES_CLASSPATH), CLASSIFY, f"--input={src}",
                    f"--output={tmp_path / 'out'}", *job_server.flags(),
                    f"--expansionService={job_server.endpoint}", "--modelUri=/m.pkl",
                    timeout=120)
    assert done.returncode != 0
    assert (f"the service at {job_server.endpoint} is not an expansion service"
            in done.stderr), done.stderr[-3000:]
    assert "crossinfer-expansion-service --port PORT" in done.stderr
    assert not (tmp_path / "out-predictions.jsonl").exists()


def _fake_crossinfer(tmp_path, version: str) -> str:
    """A site directory whose crossinfer metadata says ``version``, to put first on a path."""
    fake = tmp_path / "site" / f"crossinfer-{version}.dist-info"
    fake.mkdir(parents=True)
    (fake / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: crossinfer\nVersion: {version}\n")
    return str(tmp_path / "site")


def test_a_different_crossinfer_version_is_refused_before_start(tmp_path, listener):
    env = java_env()
    env["PYTHONPATH"] = os.pathsep.join([_fake_crossinfer(tmp_path, "9.9.9"), env["PYTHONPATH"]])
    stderr = _construct_only(tmp_path, env, listener)
    assert "has crossinfer 9.9.9, but this Java library is crossinfer" in stderr, stderr[-3000:]


def test_a_service_of_another_version_refuses_the_java_library(tmp_path, sklearn_model,
                                                                listener):
    """The handshake with a service the user started: the Java library sends its version and
    the service (crossinfer 9.9.9 here) refuses it at expansion, naming both versions."""
    path, _ = sklearn_model
    env = java_env()
    env["PYTHONPATH"] = os.pathsep.join([_fake_crossinfer(tmp_path, "9.9.9"), env["PYTHONPATH"]])
    service = Service("--port", "0", "--trusted-model-root", str(path.parent),
                      log_path=tmp_path / "service.log", env=env)
    try:
        src = tmp_path / "in.jsonl"
        src.write_text('{"id": 1, "features": [1.0]}\n')
        done = run_java(classpath(EXAMPLES_CLASSPATH), CLASSIFY, f"--input={src}",
                        f"--output={tmp_path / 'out'}", "--runner=PortableRunner",
                        f"--jobEndpoint={listener}", f"--modelUri={path}",
                        f"--expansionService={service.address}", timeout=120)
    finally:
        service.stop()
    assert done.returncode != 0
    assert "the client is crossinfer" in done.stderr, done.stderr[-3000:]
    assert "but the expansion service has crossinfer 9.9.9" in done.stderr
