"""Named callables: custom handler, preprocess and postprocess, with typed outputs."""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pytest
import torch

from crossinfer import ConfigurationError
from tests import models
from tests.conftest import failure_ids, feature_rows, run


def test_custom_handler_factory(sklearn_model):
    path, model = sklearn_model
    x, _ = models.dataset(n=40, seed=12)
    preds, fails = run(feature_rows(x), framework="custom", handler="tests.models:sklearn_handler",
                       model_uri=str(path), feature_field="features", passthrough_fields=["id"],
                       postprocess="regression")
    assert not fails
    want = model.predict(x)
    assert {p.id: p.value for p in preds} == {i: float(want[i]) for i in range(40)}
    assert {p.model_id for p in preds} == {str(path)}


def test_custom_preprocess_and_postprocess_with_output_schema(mlp_model):
    path, model = mlp_model
    x, _ = models.dataset(n=30, seed=13)
    preds, fails = run(feature_rows(x), framework="pytorch", model_uri=str(path),
                       model_class="tests.models:MLP", preprocess="tests.models:scaled_features",
                       postprocess="tests.models:label_name",
                       output_schema={"name": "string", "top": "float64"},
                       passthrough_fields=["id"])
    assert not fails and len(preds) == 30
    with torch.no_grad():
        logits = model(torch.from_numpy(x * 2.0)).numpy()
    for p in preds:
        assert p.name == ["low", "mid", "high"][int(logits[p.id].argmax())]
        assert p.top == pytest.approx(float(logits[p.id].max()), rel=1e-5)


def test_postprocess_errors_fail_only_their_rows(sklearn_model):
    path, _ = sklearn_model
    x, _ = models.dataset(n=20, seed=14)
    preds, fails = run(feature_rows(x), framework="sklearn", model_uri=str(path),
                       feature_field="features", passthrough_fields=["id"],
                       postprocess="tests.models:broken_postprocess",
                       output_schema={"ok": "bool"})
    assert sorted(p.id for p in preds) == list(range(0, 20, 2))
    assert failure_ids(fails) == set(range(1, 20, 2))
    assert all(f.stage == "postprocess" and f.error.startswith("RuntimeError: cannot describe")
               for f in fails)


def test_factory_that_returns_no_handler_fails_at_construction(sklearn_model):
    with pytest.raises(ConfigurationError, match="not a Beam ModelHandler"):
        run([beam.Row(id=1, features=[1.0])], framework="custom",
            handler="tests.models:not_a_handler", model_uri=str(sklearn_model[0]),
            feature_field="features")
