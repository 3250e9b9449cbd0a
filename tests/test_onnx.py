"""ONNX end to end: fixed-width input checked, dynamic sequence axis padded."""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests import models
from tests.conftest import failure_ids, feature_rows, run


def test_matches_onnxruntime_directly(mlp_onnx):
    path, _ = mlp_onnx
    x, _ = models.dataset(n=120, seed=11)
    rows = feature_rows(x) + [beam.Row(id=500, features=[1.0] * 3)]
    preds, fails = run(rows, framework="onnx", model_uri=str(path), feature_field="features",
                       passthrough_fields=["id"])
    logits = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    proba = e / e.sum(axis=1, keepdims=True)
    assert len(preds) == 120
    for p in preds:
        assert p.label == int(proba[p.id].argmax())
        assert p.score == pytest.approx(float(proba[p.id].max()), rel=1e-4)
        assert p.model_id == str(path)
    assert failure_ids(fails) == {500}
    assert "takes exactly 8" in fails[0].error and "shape" in fails[0].error


def test_dynamic_sequence_axis_is_padded(sequence_model, tmp_path):
    _, model = sequence_model
    path = tmp_path / "seq.onnx"
    models.export_onnx(model, path, torch.ones(2, 5, dtype=torch.int64), dynamic_length=True)
    seqs = models.token_sequences(n=80, seed=3)
    rows = [beam.Row(id=i, tokens=[int(t) for t in s]) for i, s in enumerate(seqs)]
    preds, fails = run(rows, framework="onnx", model_uri=str(path), feature_field="tokens",
                       passthrough_fields=["id"], postprocess="raw",
                       min_batch_size=40, max_batch_size=40)
    assert fails == [] and len(preds) == 80
    session = ort.InferenceSession(str(path))
    for p in preds:
        alone = session.run(None, {"x": seqs[p.id][None, :]})[0][0]
        np.testing.assert_allclose(p.output, alone, rtol=1e-5, atol=1e-6)
