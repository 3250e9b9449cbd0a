"""scikit-learn end to end on the DirectRunner, against the estimator called directly."""

from __future__ import annotations

import json
import pickle

import apache_beam as beam
import joblib
import numpy as np
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression

from tests import models
from tests.conftest import failure_ids, feature_rows, plan_for, run


def test_argmax_matches_predict_proba(sklearn_model):
    path, model = sklearn_model
    x, _ = models.dataset(n=300, seed=7)
    preds, fails = run(feature_rows(x), framework="sklearn", model_uri=str(path),
                       feature_field="features", passthrough_fields=["id"])
    assert fails == []
    assert len(preds) == 300
    proba = model.predict_proba(x)
    for p in preds:
        assert p.label == int(model.classes_[proba[p.id].argmax()])
        assert p.score == pytest.approx(proba[p.id].max(), rel=1e-5)
        assert p.model_id == str(path)


def test_class_labels_are_the_estimators_own(tmp_path):
    x, y = models.dataset(n=200, seed=1)
    model = LogisticRegression(max_iter=300).fit(x, np.array([3, 5, 9])[y])
    path = tmp_path / "labels.joblib"
    joblib.dump(model, path)  # joblib, picked by the file extension
    preds, fails = run(feature_rows(x[:50]), framework="sklearn", model_uri=str(path),
                       feature_field="features", passthrough_fields=["id"])
    assert not fails
    assert sorted(p.id for p in preds) == list(range(50))
    expected = model.predict(x[:50])
    assert {p.id: p.label for p in preds} == {i: int(expected[i]) for i in range(50)}


def test_regression_and_feature_fields(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(100, 3))
    model = LinearRegression().fit(x, x @ np.array([1.0, -2.0, 0.5]) + 4.0)
    path = tmp_path / "linreg.pkl"
    path.write_bytes(pickle.dumps(model))
    rows = [beam.Row(id=i, a=float(v[0]), b=float(v[1]), c=int(round(v[2] * 10))) for i, v in
            enumerate(x)]
    preds, fails = run(rows, framework="sklearn", model_uri=str(path),
                       feature_fields=["a", "b", "c"], postprocess="regression",
                       passthrough_fields=["id"])
    assert not fails and len(preds) == 100
    stacked = np.array([[r.a, r.b, r.c] for r in rows], dtype=np.float32)
    want = model.predict(stacked)
    for p in preds:
        assert p.value == pytest.approx(want[p.id], rel=1e-5)


def test_raw_gives_every_probability(sklearn_model):
    path, model = sklearn_model
    x, _ = models.dataset(n=20, seed=2)
    preds, fails = run(feature_rows(x), framework="sklearn", model_uri=str(path),
                       feature_field="features", passthrough_fields=["id"], postprocess="raw")
    assert fails == [] and sorted(p.id for p in preds) == list(range(20))
    proba = model.predict_proba(x)
    for p in preds:
        np.testing.assert_allclose(p.output, proba[p.id], rtol=1e-5)


def test_corrupt_rows_fail_alone_and_nothing_is_lost(sklearn_model):
    path, model = sklearn_model
    x, _ = models.dataset(n=60, seed=4)
    rows = feature_rows(x)
    rows += [
        beam.Row(id=100, features=[1.0] * (models.N_FEATURES - 1)),  # too short
        beam.Row(id=101, features=[1.0] * (models.N_FEATURES + 3)),  # too long
        beam.Row(id=102, features=[float("nan")] * models.N_FEATURES),  # NaN
        beam.Row(id=103, features=None),  # null
        beam.Row(id=104, features=["a"] * models.N_FEATURES),  # not numbers
    ]
    # One batch holds every row, so a good row next to a bad one must still be predicted.
    preds, fails = run(rows, framework="sklearn", model_uri=str(path), feature_field="features",
                       passthrough_fields=["id"], min_batch_size=len(rows),
                       max_batch_size=len(rows))
    assert len(preds) + len(fails) == len(rows)
    assert sorted(p.id for p in preds) == list(range(60))
    assert failure_ids(fails) == {100, 101, 102, 103, 104}
    by_id = {json.loads(f.element)["id"]: f for f in fails}
    assert by_id[100].stage == "preprocess" and "has 7 values" in by_id[100].error
    assert "exactly 8" in by_id[101].error
    assert by_id[102].stage == "preprocess" and "NaN" in by_id[102].error  # screened
    assert by_id[103].stage == "preprocess" and "null" in by_id[103].error
    assert by_id[104].stage == "preprocess" and "non-numeric" in by_id[104].error
    proba = model.predict_proba(x)
    assert all(p.label == int(proba[p.id].argmax()) for p in preds)


@pytest.mark.parametrize("sharing", [{"large_model": True}, {"model_copies": 1}])
def test_model_shared_across_processes(sklearn_model, sharing):
    # Beam then shares one copy per machine (tests/test_sharing.py counts the loads with two
    # worker processes); in process, the handler Beam gets must ask for it.
    path, model = sklearn_model
    x, _ = models.dataset(n=40, seed=15)
    kwargs = dict(framework="sklearn", model_uri=str(path), feature_field="features",
                  passthrough_fields=["id"], **sharing)
    preds, fails = run(feature_rows(x), **kwargs)
    assert not fails
    proba = model.predict_proba(x)
    assert {p.id: p.label for p in preds} == {i: int(proba[i].argmax()) for i in range(40)}
    handler = plan_for(feature_rows(x), **kwargs).handler
    assert handler.share_model_across_processes() and handler.model_copies() == 1