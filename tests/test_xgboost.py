"""XGBoost end to end: the signature read off the booster (num_features, objective), outputs
equal to calling the booster directly, per-row failures, sharing, and the model repository
reading JSON/UBJSON as data."""

from __future__ import annotations

import json
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest

from crossinfer._errors import ConfigurationError, ModelLoadError
from tests import models
from tests.conftest import failure_ids, feature_rows, run
from tests.test_java_e2e import job_server  # noqa: F401 - the fixture

xgboost = pytest.importorskip("xgboost")


def train(path: Path, objective: str, seed: int = 0, **params) -> "xgboost.Booster":
    """A tiny booster on the shared dataset, saved as JSON (or UBJSON for .ubj)."""
    x, y = models.dataset(n=300, seed=seed)
    label = x[:, 3] if objective.startswith("reg:") else (y > 0 if objective.startswith(
        "binary:") else y)
    booster = xgboost.train({"objective": objective, "max_depth": 3, "seed": seed, **params},
                            xgboost.DMatrix(x, label=label.astype(np.float32)), 8)
    booster.save_model(str(path))
    return booster


@pytest.mark.parametrize("suffix", [".json", ".ubj"])
def test_multiclass_matches_the_booster(tmp_path, suffix):
    path = tmp_path / f"softprob{suffix}"
    booster = train(path, "multi:softprob", num_class=3)
    x, _ = models.dataset(n=90, seed=5)
    x[7, 2] = np.nan  # XGBoost's missing value: scored, not failed
    rows = feature_rows(x) + [beam.Row(id=500, features=[1.0] * 3)]
    preds, fails = run(rows, framework="xgboost", model_uri=str(path),
                       feature_field="features", passthrough_fields=["id"], max_batch_size=32)
    want = booster.predict(xgboost.DMatrix(x))
    assert len(preds) == 90 and failure_ids(fails) == {500}
    assert "takes exactly 8 (Booster.num_features() = 8)" in fails[0].error
    for p in preds:
        assert p.label == int(want[p.id].argmax())
        assert p.score == pytest.approx(float(want[p.id].max()), rel=1e-6)
        assert p.model_id == str(path)


def test_binary_regression_and_softmax_objectives(tmp_path):
    x, _ = models.dataset(n=40, seed=6)
    binary = train(tmp_path / "b.json", "binary:logistic")
    preds, fails = run(feature_rows(x), framework="xgboost", model_uri=str(tmp_path / "b.json"),
                       feature_field="features", passthrough_fields=["id"], postprocess="raw")
    p1 = binary.predict(xgboost.DMatrix(x))
    assert fails == [] and len(preds) == 40
    for p in preds:  # one probability p of class 1 -> the two class probabilities
        np.testing.assert_allclose(p.output, [1 - p1[p.id], p1[p.id]], rtol=1e-6, atol=1e-7)

    reg = train(tmp_path / "r.json", "reg:squarederror")
    preds, fails = run(feature_rows(x), framework="xgboost", model_uri=str(tmp_path / "r.json"),
                       feature_field="features", passthrough_fields=["id"],
                       postprocess="regression")
    want = reg.predict(xgboost.DMatrix(x))
    assert fails == [] and sorted(p.id for p in preds) == list(range(40))
    for p in preds:
        assert p.value == pytest.approx(float(want[p.id]), rel=1e-6)

    softmax = train(tmp_path / "s.json", "multi:softmax", num_class=3)
    preds, _ = run(feature_rows(x), framework="xgboost", model_uri=str(tmp_path / "s.json"),
                   feature_field="features", passthrough_fields=["id"])
    labels = softmax.predict(xgboost.DMatrix(x))  # multi:softmax predicts the label
    assert {p.id: p.label for p in preds} == {i: int(v) for i, v in enumerate(labels)}


def test_argmax_on_a_regressor_and_wrong_output_fail_at_construction(tmp_path):
    train(tmp_path / "r.json", "reg:squarederror")
    rows = feature_rows(np.zeros((1, models.N_FEATURES), np.float32))
    kw = dict(framework="xgboost", model_uri=str(tmp_path / "r.json"), feature_field="features")
    with pytest.raises(ConfigurationError, match="postprocess='regression'"):
        run(rows, **kw)
    with pytest.raises(ConfigurationError, match="objective 'reg:squarederror'"):
        run(rows, **kw, output="probabilities")
    (tmp_path / "junk.json").write_text("{not a model")
    with pytest.raises(ModelLoadError, match="did not load as a xgboost model"):
        run(rows, **{**kw, "model_uri": str(tmp_path / "junk.json")}, postprocess="raw")


@pytest.mark.parametrize("sharing", [{"large_model": True}, {"model_copies": 2}])
def test_shared_model_in_process(tmp_path, sharing):
    booster = train(tmp_path / "m.json", "multi:softprob", num_class=3)
    x, _ = models.dataset(n=30, seed=8)
    preds, fails = run(feature_rows(x), framework="xgboost", model_uri=str(tmp_path / "m.json"),
                       feature_field="features", passthrough_fields=["id"], postprocess="raw",
                       **sharing)
    want = booster.predict(xgboost.DMatrix(x))
    assert fails == [] and len(preds) == 30
    for p in preds:
        np.testing.assert_allclose(p.output, want[p.id], rtol=1e-6)


def test_blocks_score_like_rows(tmp_path):
    from tests.test_blocks import FlatBlock, _by_id, _run_typed

    booster = train(tmp_path / "m.json", "multi:softprob", num_class=3)
    x, _ = models.dataset(n=50, seed=9)
    flat = FlatBlock(list(range(50)), x.ravel().tolist())
    preds, fails = _run_typed([flat], FlatBlock, framework="xgboost",
                              model_uri=str(tmp_path / "m.json"), feature_field="features",
                              passthrough_fields=["id"], blocks=True)
    want = booster.predict(xgboost.DMatrix(x))
    assert fails == []
    got = _by_id(preds)
    assert sorted(got) == list(range(50))
    for i, (label, score) in got.items():
        assert label == int(want[i].argmax()) and score == pytest.approx(want[i].max(), rel=1e-6)


def test_repository_reads_json_as_data(tmp_path):
    from crossinfer import _inspect, _repository
    from crossinfer._config import parse
    from crossinfer._policy import Policy

    data = tmp_path / "data"
    data.mkdir()
    train(data / "m.json", "multi:softprob", num_class=3)
    config = parse(framework="xgboost", model_uri=str(data / "m.json"),
                   feature_field="features")
    policy = Policy(repository=_repository.Repository(roots=[str(data)]))
    # A root for data formats only admits it (a pickle there is refused).
    assert _inspect.admit(config, policy) == {None: str((data / "m.json").resolve())}
    pickled = parse(framework="sklearn", model_uri=str(data / "m.json"),
                    feature_field="features")
    with pytest.raises(ModelLoadError, match="runs code when loaded"):
        _inspect.admit(pickled, policy)


@pytest.mark.java
def test_from_java(job_server, tmp_path):
    """CrossInference.xgboost(uri) from a Java pipeline; the model under a data-only root."""
    from tests._java_frameworks import java_rows

    data, trusted = tmp_path / "data", tmp_path / "trusted"
    data.mkdir()
    trusted.mkdir()
    booster = train(data / "m.ubj", "multi:softprob", num_class=3)
    x, _ = models.dataset(n=50, seed=12)
    preds, fails = java_rows(job_server, tmp_path, "xgboost", data / "m.ubj", x, data, trusted)
    want = booster.predict(xgboost.DMatrix(x))
    assert sorted(p["id"] for p in preds) == list(range(50))
    for p in preds:
        assert p["label"] == int(want[p["id"]].argmax())
        assert p["score"] == pytest.approx(float(want[p["id"]].max()), rel=1e-6)
    assert [json.loads(f["element"])["id"] for f in fails] == [900]
    assert "takes exactly 8" in fails[0]["error"]
