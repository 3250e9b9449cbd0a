"""large_model / model_copies with two worker processes, for every framework.

Beam then loads the model in one process and the workers call it through a proxy: nothing on
the workers may inspect the model object (all of it comes from the signature).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import apache_beam as beam
import numpy as np
import onnxruntime as ort
import pytest
import torch
from apache_beam.options.pipeline_options import PipelineOptions

from crossinfer import Inference
from crossinfer._rows import to_json
from tests import models, recorded
from tests.conftest import feature_rows, plan_for, run


class _WriteJson(beam.DoFn):
    """Collects across processes: one JSON-lines file per bundle."""

    def __init__(self, directory: str) -> None:
        self._dir = directory

    def start_bundle(self):
        self._lines = []

    def process(self, element):
        self._lines.append(to_json(element))

    def finish_bundle(self):
        if self._lines:  # named for the worker process that wrote it
            Path(self._dir, f"{os.getpid()}-{uuid.uuid4().hex}").write_text(
                "\n".join(self._lines))


def _pids(directory: Path) -> set[int]:
    return {int(f.name.split("-")[0]) for f in directory.iterdir()}


def _read(directory: Path) -> list[dict]:
    return [json.loads(line) for f in directory.iterdir() for line in f.read_text().splitlines()]


def run_two_workers(tmp_path: Path, rows, transforms: dict[str, dict]) -> dict[str, tuple]:
    """Each named Inference over the same rows, in one job with two worker processes (the
    workers and Beam's model server start once); name -> (predictions, failures, the pids of
    the worker processes that wrote its predictions)."""
    options = PipelineOptions(flags=[], direct_num_workers=2,
                              direct_running_mode="multi_processing")
    dirs = {}
    with beam.Pipeline(options=options) as p:
        source = p | beam.Create(rows, reshuffle=True)
        for name, kwargs in transforms.items():
            pred, fail = tmp_path / f"{name}-pred", tmp_path / f"{name}-fail"
            pred.mkdir()
            fail.mkdir()
            dirs[name] = (pred, fail)
            out = source | name >> Inference(**kwargs)
            _ = out["predictions"] | f"P{name}" >> beam.ParDo(_WriteJson(str(pred)))
            _ = out["failures"] | f"F{name}" >> beam.ParDo(_WriteJson(str(fail)))
    return {name: (_read(pred), _read(fail), _pids(pred)) for name, (pred, fail) in dirs.items()}


def _expected(framework, x, sklearn_model, mlp_model, mlp_onnx):
    """(Inference kwargs, expected outputs); sklearn and pytorch models record their loads."""
    if framework == "sklearn":
        kw = dict(model_uri=str(sklearn_model[0]))
        want = sklearn_model[1].predict_proba(x.astype(np.float64))
    elif framework == "pytorch":
        kw = dict(model_uri=str(mlp_model[0]), model_class="tests.recorded:RecordingMLP")
        with torch.no_grad():
            want = mlp_model[1](torch.from_numpy(x)).numpy()
    else:
        kw = dict(model_uri=str(mlp_onnx[0]))
        want = ort.InferenceSession(str(mlp_onnx[0])).run(None, {"x": x})[0]
    return kw, want


@pytest.fixture
def recording(tmp_path, monkeypatch, mlp_onnx):
    """Recording models (sklearn, pytorch, and the ONNX model) and the file of their events."""
    record = tmp_path / "events"
    sk = tmp_path / "logreg.pkl", recorded.train_logreg(tmp_path / "logreg.pkl")
    mlp = tmp_path / "mlp.pt", recorded.train_mlp(tmp_path / "mlp.pt")
    monkeypatch.setenv(recorded.RECORD, str(record))
    return record, sk, mlp, mlp_onnx


def _loads_elsewhere(record: Path) -> list[int]:
    """Pids of the model loads outside this process (construction loads here)."""
    return [pid for e, pid, _ in recorded.events(record) if e == "load" and pid != os.getpid()]


# A job with two worker processes takes ~30 s to start and stop here: one job holds one
# sharing mode per framework; both modes per framework run in process (next test).
@pytest.mark.timeout(300)
def test_shared_models_in_two_worker_processes(tmp_path, recording, monkeypatch):
    # The worker processes import tests.models: put this checkout on their path.
    repo = str(Path(__file__).resolve().parent.parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        filter(None, [repo, os.environ.get("PYTHONPATH")])))
    x, _ = models.dataset(n=60, seed=31)
    sharing = {"sklearn": {"model_copies": 1}, "pytorch": {"large_model": True},
               "onnx": {"large_model": True}}
    expected, transforms = {}, {}
    for framework, mode in sharing.items():
        kw, expected[framework] = _expected(framework, x, *recording[1:])
        transforms[framework] = dict(framework=framework, feature_field="features",
                                     passthrough_fields=["id"], postprocess="raw",
                                     max_batch_size=16, **kw, **mode)
    results = run_two_workers(tmp_path, feature_rows(x), transforms)
    workers = set()
    for framework, (preds, fails, pids) in results.items():
        assert fails == [] and len(preds) == 60, (framework, fails[:2])
        workers |= pids
        for p in preds:
            np.testing.assert_allclose(p["output"], expected[framework][p["id"]], rtol=1e-5,
                                       atol=1e-6)
    # One load per machine for each recording model (sklearn, pytorch), which the other
    # worker calls through Beam's proxy: without sharing each worker would load its own.
    assert len(workers) == 2, workers
    loads = _loads_elsewhere(recording[0])
    assert len(loads) == 2, (loads, workers)


@pytest.mark.parametrize("framework", ["pytorch", "onnx"])
@pytest.mark.parametrize("sharing", [{"large_model": True}, {"model_copies": 2}])
def test_shared_model_in_process(framework, sharing, recording):
    # Beam serves a shared model from its own process even for an in-process runner.
    x, _ = models.dataset(n=30, seed=32)
    kw, want = _expected(framework, x, *recording[1:])
    preds, fails = run(feature_rows(x), framework=framework, feature_field="features",
                       passthrough_fields=["id"], postprocess="raw", **kw, **sharing)
    assert fails == [] and len(preds) == 30
    for p in preds:
        np.testing.assert_allclose(p.output, want[p.id], rtol=1e-5, atol=1e-6)
    handler = plan_for(feature_rows(x), framework=framework, feature_field="features",
                       postprocess="raw", **kw, **sharing).handler
    assert handler.share_model_across_processes()
    assert handler.model_copies() == sharing.get("model_copies", 1)
