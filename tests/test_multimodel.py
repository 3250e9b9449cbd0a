"""Several models in one transform: each row's key field picks its model."""

from __future__ import annotations

import apache_beam as beam
import numpy as np

from tests import models
from tests.conftest import failure_ids, run


def test_each_row_goes_to_its_model(tmp_path):
    a, b = tmp_path / "a.pkl", tmp_path / "b.pkl"
    model_a = models.train_sklearn(a, seed=1)
    model_b = models.train_sklearn(b, seed=2)
    x, _ = models.dataset(n=60, seed=21)
    x[:, 0] *= 0.1  # make the two models disagree more often
    keys = ["a" if i % 3 else "b" for i in range(60)]
    rows = [beam.Row(id=i, segment=keys[i], features=[float(v) for v in x[i]]) for i in range(60)]
    rows.append(beam.Row(id=99, segment="c", features=[0.0] * models.N_FEATURES))
    preds, fails = run(rows, framework="sklearn", models={"a": str(a), "b": str(b)},
                       model_key_field="segment", feature_field="features",
                       passthrough_fields=["id", "segment"], postprocess="raw",
                       max_batch_size=16)
    assert len(preds) == 60
    chosen = {"a": (model_a, str(a)), "b": (model_b, str(b))}
    for p in preds:
        model, uri = chosen[p.segment]
        assert p.model_id == uri
        np.testing.assert_allclose(p.output, model.predict_proba(x[p.id:p.id + 1])[0], rtol=1e-5)
    assert failure_ids(fails) == {99}
    assert "segment='c' names no model" in fails[0].error and fails[0].stage == "preprocess"
