"""A real Java pipeline gets predictions from Python: Java ClassifyRows on the PortableRunner,
our expansion service, Beam's Python job server, models trained here. Each Java prediction
must equal the Python-only pipeline's for the same rows, and every input line must come back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
import torch

from expansion_service._local import LocalStack
from tests import models
from tests.conftest import run

REPO = Path(__file__).resolve().parent.parent
CLASSPATH = REPO / "java" / "build" / "classpath.txt"

pytestmark = pytest.mark.java


@pytest.fixture(scope="module")
def stack(tmp_path_factory, model_dir):
    if shutil.which("java") is None or not CLASSPATH.exists():
        pytest.fail("the Java build is missing: run `bash scripts/setup.sh` (gradle build)")
    workdir = tmp_path_factory.mktemp("stack")
    # The models are pickles and state_dicts the tests make: a trusted root.
    # This checkout's crossinfer and service, whatever else is installed.
    pythonpath = f"{REPO / 'python'}{os.pathsep}{REPO}"
    with LocalStack(workdir, allow=["tests.models.*"], env={"PYTHONPATH": pythonpath},
                    trusted_model_roots=[model_dir]) as s:
        yield s


def _lines(x) -> list[dict[str, Any]]:
    good = [{"id": i, "features": [float(v) for v in row]} for i, row in enumerate(x)]
    bad = [
        {"id": 900, "features": None},
        {"id": 901, "features": [1.0, "two", 3.0]},
        {"id": 902, "features": [0.5] * (models.N_FEATURES - 1)},
    ]
    return good + bad


def _run_java(stack: LocalStack, tmp: Path, lines: list, *options: str) -> tuple[list, list, str]:
    tmp.mkdir(parents=True, exist_ok=True)
    src = tmp / "input.jsonl"
    raw = [json.dumps(line) for line in lines] + ["{this is not json"]
    src.write_text("\n".join(raw) + "\n")
    out = tmp / "out"
    cmd = ["java", "-cp", CLASSPATH.read_text().strip(), "io.crossinfer.examples.ClassifyRows",
           f"--input={src}", f"--output={out}", *stack.java_args(), *options]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-5000:],
                                  stack.log("expansion_service")[-3000:])
    read = lambda name: [json.loads(l) for l in Path(f"{out}-{name}.jsonl").read_text().splitlines()
                         if l.strip()]
    return read("predictions"), read("failures"), done.stdout


def _python_predictions(x, **kwargs) -> dict[int, Any]:
    rows = [beam.Row(id=i, features=[float(v) for v in row]) for i, row in enumerate(x)]
    preds, fails = run(rows, feature_field="features", passthrough_fields=["id"], **kwargs)
    assert not fails
    return {p.id: p for p in preds}


def _check(java_preds, java_fails, stdout, python, n_good):
    assert {p["id"] for p in java_preds} == set(range(n_good))
    for p in java_preds:
        want = python[p["id"]]
        assert p["label"] == want.label
        assert p["score"] == pytest.approx(want.score, rel=1e-6)
        assert p["model_id"] == want.model_id
    # 3 bad rows fail in Python, the unparseable line in Java's parser: nothing is lost.
    stages = sorted(f["stage"] for f in java_fails)
    assert stages == ["parse", "preprocess", "preprocess", "preprocess"]
    errors = " | ".join(f["error"] for f in java_fails)
    assert "is null" in errors and "non-numeric" in errors and "takes exactly 8" in errors
    assert {json.loads(f["element"])["id"] for f in java_fails if f["stage"] != "parse"} == {
        900, 901, 902}
    assert f"predictions={n_good} failures=4" in stdout


def test_sklearn_from_java(stack, tmp_path, sklearn_model):
    path, _ = sklearn_model
    x, _ = models.dataset(n=200, seed=41)
    preds, fails, stdout = _run_java(stack, tmp_path, _lines(x), "--framework=sklearn",
                                     f"--modelUri={path}")
    _check(preds, fails, stdout, _python_predictions(x, framework="sklearn",
                                                     model_uri=str(path)), 200)


def test_onnx_from_java(stack, tmp_path, mlp_onnx):
    path, _ = mlp_onnx
    x, _ = models.dataset(n=150, seed=42)
    preds, fails, stdout = _run_java(stack, tmp_path, _lines(x), "--framework=onnx",
                                     f"--modelUri={path}")
    _check(preds, fails, stdout, _python_predictions(x, framework="onnx", model_uri=str(path)),
           150)


def test_pytorch_state_dict_from_java(stack, tmp_path, mlp_model):
    path, _ = mlp_model
    x, _ = models.dataset(n=150, seed=43)
    preds, fails, stdout = _run_java(
        stack, tmp_path, _lines(x), "--framework=pytorch", f"--modelUri={path}",
        "--modelClass=tests.models:MLP", '--modelParamsJson={"hidden": 16}')
    _check(preds, fails, stdout, _python_predictions(
        x, framework="pytorch", model_uri=str(path), model_class="tests.models:MLP",
        model_params={"hidden": 16}), 150)


def test_bad_configuration_fails_at_expansion(stack, tmp_path, model_dir):
    x, _ = models.dataset(n=5, seed=44)
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(l) for l in _lines(x)))
    cmd = ["java", "-cp", CLASSPATH.read_text().strip(), "io.crossinfer.examples.ClassifyRows",
           f"--input={src}", f"--output={tmp_path / 'out'}", *stack.java_args(),
           "--framework=sklearn", f"--modelUri={model_dir / 'missing.pkl'}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "ModelLoadError" in done.stderr and "does not exist" in done.stderr
    assert not (tmp_path / "out-predictions.jsonl").exists()
