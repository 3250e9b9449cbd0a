"""Each model's signature: read off the model (not guessed), overridable, checked by a probe.

Every test here is a bug report turned around: the model called directly is the oracle.
"""

from __future__ import annotations

import json
import pickle

import apache_beam as beam
import numpy as np
import onnxruntime as ort
import pytest
import torch

from crossinfer import ConfigurationError, ModelLoadError
from crossinfer._signature import Signature
from tests import models
from tests.conftest import failure_ids, feature_rows, run

CLASSES = 3


def _tokens(n: int, seed: int, low: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(low, models.VOCAB, size=int(k)) for k in rng.integers(1, 30, size=n)]


def _apply(**kwargs):
    from crossinfer import Inference

    p = beam.Pipeline()
    _ = p | beam.Create([beam.Row(id=1, features=[0.0] * 8)]) | Inference(**kwargs)


def _alone(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)[None, ...])[0].numpy()


def test_head_declared_before_body_takes_token_rows(tmp_path):
    model = models.save_module(models.HeadFirst(), tmp_path / "head.pt")
    seqs = _tokens(40, seed=1, low=1)
    rows = [beam.Row(id=i, tokens=s.tolist()) for i, s in enumerate(seqs)]
    preds, fails = run(rows, framework="pytorch", model_uri=str(tmp_path / "head.pt"),
                       model_class="tests.models:HeadFirst", feature_field="tokens",
                       passthrough_fields=["id"], postprocess="raw")
    assert not fails and len(preds) == 40
    for p in preds:
        np.testing.assert_allclose(p.output, _alone(model, seqs[p.id]), rtol=1e-5, atol=1e-6)


def test_padding_idx_one_is_the_pad_value(tmp_path):
    torch.manual_seed(3)
    model = models.save_module(models.PadOne(), tmp_path / "pad1.pt")
    seqs = [s for s in _tokens(120, seed=2) if 1 not in s.tolist()] or _tokens(1, 0, low=2)
    rows = [beam.Row(id=i, tokens=s.tolist()) for i, s in enumerate(seqs)]
    preds, fails = run(rows, framework="pytorch", model_uri=str(tmp_path / "pad1.pt"),
                       model_class="tests.models:PadOne", feature_field="tokens",
                       passthrough_fields=["id"], postprocess="raw", min_batch_size=32,
                       max_batch_size=64)
    assert not fails and len(preds) == len(seqs)
    for p in preds:
        np.testing.assert_allclose(p.output, _alone(model, seqs[p.id]), rtol=1e-5, atol=1e-6)


def test_final_softmax_is_not_softmaxed_twice(tmp_path):
    torch.manual_seed(4)
    model = models.save_module(models.SoftmaxMLP(), tmp_path / "sm.pt")
    x, _ = models.dataset(n=50, seed=3)
    preds, fails = run(feature_rows(x), framework="pytorch", model_uri=str(tmp_path / "sm.pt"),
                       model_class="tests.models:SoftmaxMLP", feature_field="features",
                       passthrough_fields=["id"])
    assert not fails
    with torch.no_grad():
        proba = model(torch.from_numpy(x)).numpy()
    for p in preds:
        assert p.label == int(proba[p.id].argmax())
        assert p.score == pytest.approx(float(proba[p.id].max()), rel=1e-5)


def test_final_softmax_in_onnx(tmp_path):
    torch.manual_seed(4)
    model = models.SoftmaxMLP().eval()
    path = tmp_path / "sm.onnx"
    models.export_onnx(model, path, torch.zeros(2, models.N_FEATURES))
    x, _ = models.dataset(n=30, seed=3)
    preds, fails = run(feature_rows(x), framework="onnx", model_uri=str(path),
                       feature_field="features", passthrough_fields=["id"])
    proba = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    assert not fails
    for p in preds:
        assert p.score == pytest.approx(float(proba[p.id].max()), rel=1e-5)


def test_one_output_regressor_is_not_read_as_a_logit(tmp_path):
    model = models.save_module(models.Regressor(), tmp_path / "reg.pt")
    kw = dict(framework="pytorch", model_uri=str(tmp_path / "reg.pt"),
              model_class="tests.models:Regressor", feature_field="features")
    with pytest.raises(ConfigurationError, match="set output='logits'"):
        _apply(**kw)
    x, _ = models.dataset(n=20, seed=5)
    preds, fails = run(feature_rows(x), postprocess="regression", passthrough_fields=["id"],
                       **kw)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()[:, 0]
    assert not fails and {p.id: p.value for p in preds} == pytest.approx(
        {i: float(want[i]) for i in range(20)}, rel=1e-5, abs=1e-6)
    # Stated as a binary logit, argmax reads it as one.
    preds, _ = run(feature_rows(x), output="logits", passthrough_fields=["id"], **kw)
    assert {p.id: p.label for p in preds} == {i: int(want[i] > 0) for i in range(20)}


def test_token_rows_of_the_wrong_rank_and_bool_rows_are_failures(sequence_model, mlp_model):
    path, model = sequence_model
    rows = [beam.Row(id=0, tokens=[[3, 4, 5], [6, 7, 8]]), beam.Row(id=1, tokens=[3, 4, 5])]
    preds, fails = run(rows, framework="pytorch", model_uri=str(path),
                       model_class="tests.models:MeanEmbedding", feature_field="tokens",
                       passthrough_fields=["id"], postprocess="raw")
    assert [p.id for p in preds] == [1] and failure_ids(fails) == {0}
    assert "shape [2, 3]" in fails[0].error and fails[0].stage == "preprocess"
    np.testing.assert_allclose(preds[0].output, _alone(model, np.array([3, 4, 5])), rtol=1e-5)
    rows = [beam.Row(id=0, flags=[True, False] * 4), beam.Row(id=1, flags=[1.0, 0.0] * 4)]
    preds, fails = run(rows, framework="pytorch", model_uri=str(mlp_model[0]),
                       model_class="tests.models:MLP", feature_field="flags",
                       passthrough_fields=["id"])
    assert [p.id for p in preds] == [1] and failure_ids(fails) == {0}
    assert "booleans" in fails[0].error


def test_dict_output_needs_output_named(tmp_path):
    model = models.save_module(models.DictOutput(), tmp_path / "dict.pt")
    kw = dict(framework="pytorch", model_uri=str(tmp_path / "dict.pt"),
              model_class="tests.models:DictOutput", feature_field="features")
    with pytest.raises(ConfigurationError, match="set output='named'"):
        _apply(**kw)
    x, _ = models.dataset(n=20, seed=6)
    preds, fails = run(feature_rows(x), output="named", postprocess="tests.models:named_fields",
                       output_schema={"top": "int64", "first": "float64"},
                       passthrough_fields=["id"], **kw)
    assert not fails and len(preds) == 20
    with torch.no_grad():
        out = model(torch.from_numpy(x))
    for p in preds:
        assert p.top == int(out["logits"][p.id].argmax())
        assert p.first == pytest.approx(float(out["embedding"][p.id, 0]))


def test_multi_input_models_are_refused_at_construction(tmp_path):
    models.save_module(models.TwoInputs(), tmp_path / "two.pt")
    with pytest.raises(ConfigurationError, match="takes 2 inputs"):
        _apply(framework="pytorch", model_uri=str(tmp_path / "two.pt"),
               model_class="tests.models:TwoInputs", feature_field="features")
    path = tmp_path / "two.onnx"
    torch.onnx.export(models.TwoInputs().eval(), (torch.zeros(2, 8), torch.ones(2, 8)),
                      str(path), dynamo=False, input_names=["x", "mask"], output_names=["y"],
                      dynamic_axes={"x": {0: "b"}, "mask": {0: "b"}, "y": {0: "b"}})
    with pytest.raises(ConfigurationError, match="has 2 inputs .*framework=.custom."):
        _apply(framework="onnx", model_uri=str(path), feature_field="features")


def test_inference_args_reach_the_model(tmp_path):
    model = models.save_module(models.Scaled(), tmp_path / "scaled.pt")
    x, _ = models.dataset(n=10, seed=7)
    preds, fails = run(feature_rows(x), framework="pytorch", model_uri=str(tmp_path / "scaled.pt"),
                       model_class="tests.models:Scaled", feature_field="features",
                       postprocess="raw", inference_args={"scale": 3.0},
                       passthrough_fields=["id"])
    with torch.no_grad():
        want = model(torch.from_numpy(x), scale=3.0).numpy()
    assert not fails
    for p in preds:
        np.testing.assert_allclose(p.output, want[p.id], rtol=1e-5)


def test_sklearn_keeps_float64(sklearn_model):
    path, model = sklearn_model
    x, _ = models.dataset(n=20, seed=8)
    x = x.astype(np.float64) * 1.000000123
    x[0, 0] = 1e39  # not a float32
    preds, fails = run(feature_rows(x), framework="sklearn", model_uri=str(path),
                       feature_field="features", passthrough_fields=["id"], postprocess="raw")
    assert not fails
    proba = model.predict_proba(x)
    for p in preds:
        # float32 would drift by ~1e-7 (and make 1e39 infinite); float64 agrees to rounding
        np.testing.assert_allclose(p.output, proba[p.id], rtol=1e-12, atol=1e-15)


def test_sklearn_custom_postprocess_sees_predict_proba_or_predict(sklearn_model):
    path, model = sklearn_model
    x, _ = models.dataset(n=10, seed=9)
    kw = dict(framework="sklearn", model_uri=str(path), feature_field="features",
              passthrough_fields=["id"], postprocess="tests.models:inference_kind",
              output_schema={"values": "array<float64>"})
    preds, _ = run(feature_rows(x), **kw)
    assert {p.id: p.values for p in preds} == {
        i: pytest.approx(list(v)) for i, v in enumerate(model.predict_proba(x))}
    preds, _ = run(feature_rows(x), output="value", **kw)
    assert {p.id: p.values for p in preds} == {
        i: [float(v)] for i, v in enumerate(model.predict(x))}


def test_state_dict_without_model_class_says_so(mlp_model):
    with pytest.raises(ModelLoadError, match="holds a state_dict .*give model_class"):
        _apply(framework="pytorch", model_uri=str(mlp_model[0]), feature_field="features")


def test_a_reexported_class_is_accepted(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 3)
    torch.save(model.state_dict(), tmp_path / "linear.pt")
    x, _ = models.dataset(n=10, seed=10)
    preds, fails = run(feature_rows(x), framework="pytorch", model_uri=str(tmp_path / "linear.pt"),
                       model_class="torch.nn:Linear",
                       model_params={"in_features": 8, "out_features": 3},
                       feature_field="features", passthrough_fields=["id"], postprocess="raw")
    assert not fails
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    for p in preds:
        np.testing.assert_allclose(p.output, want[p.id], rtol=1e-5)
    with pytest.raises(ConfigurationError, match="must name a class"):
        _apply(framework="pytorch", model_uri=str(tmp_path / "linear.pt"),
               model_class="torch.nn.functional:relu", feature_field="features")


def test_safetensors_state_dict(mlp_model, tmp_path):
    from safetensors.torch import save_file

    _, model = mlp_model
    path = tmp_path / "mlp.safetensors"
    save_file(model.state_dict(), str(path))
    x, _ = models.dataset(n=10, seed=11)
    preds, fails = run(feature_rows(x), framework="pytorch", model_uri=str(path),
                       model_class="tests.models:MLP", feature_field="features",
                       passthrough_fields=["id"], postprocess="raw")
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert not fails
    for p in preds:
        np.testing.assert_allclose(p.output, want[p.id], rtol=1e-5)


def test_custom_handler_hooks_are_honoured(sklearn_model):
    path, model = sklearn_model
    x, _ = models.dataset(n=10, seed=12)
    preds, fails = run(feature_rows(x), framework="custom",
                       handler="tests.models:hooked_sklearn_handler", model_uri=str(path),
                       feature_field="features", passthrough_fields=["id"],
                       postprocess="tests.models:hooked_fields",
                       output_schema={"label": "int64", "env": "string", "first": "float64"})
    assert not fails and len(preds) == 10
    ones = int(model.predict(np.ones((1, models.N_FEATURES)))[0])
    for p in preds:
        assert p.label == ones and p.env == "set"  # preprocess, postprocess, env_vars
        assert p.first == pytest.approx(float(x[p.id, 0]))


def test_custom_torch_handler_gets_tensors(mlp_model):
    path, model = mlp_model
    x, _ = models.dataset(n=10, seed=13)
    preds, fails = run(feature_rows(x), framework="custom",
                       handler="tests.models:torch_tensor_handler", model_uri=str(path),
                       feature_field="features", passthrough_fields=["id"],
                       input_dtype="float32", postprocess="raw")
    assert not fails
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    for p in preds:
        np.testing.assert_allclose(p.output, want[p.id], rtol=1e-5)


def test_explicit_input_shape_overrides_and_is_checked(mlp_model):
    with pytest.raises(ConfigurationError, match="fails on a probe batch"):
        _apply(framework="pytorch", model_uri=str(mlp_model[0]), model_class="tests.models:MLP",
               feature_field="features", input_shape=[5], input_dtype="float32")


def test_signature_round_trips_and_refuses_bad_data():
    sig = Signature(input_name="x", input_dtype="int64", input_shape=(-1,), pad_value=1,
                    output="logits", num_classes=3, labels=(3, 5, 9),
                    sources=(("pad_value", "Embedding.padding_idx = 1"),))
    data = json.loads(json.dumps(sig.to_dict()))
    assert Signature.from_dict(data) == sig
    for bad in ({"input_shape": [0]}, {"output": "maybe"}, {"input_dtype": "object"},
                {"pad_value": float("nan")}, {"sources": [["a"]]}, {"extra": 1},
                {"labels": ["a"]}, {"input_shape": [-1, -1] * 5}):
        with pytest.raises(ModelLoadError):
            Signature.from_dict({**data, **bad})


def test_keyed_tensors_to_a_stacking_framework_fail_each_row_clearly(mlp_model):
    x, _ = models.dataset(n=5, seed=14)
    preds, fails = run(feature_rows(x), framework="pytorch", model_uri=str(mlp_model[0]),
                       model_class="tests.models:MLP", preprocess="tests.models:keyed_tensors",
                       passthrough_fields=["id"])
    assert preds == [] and failure_ids(fails) == set(range(5))
    assert all("not one array" in f.error and f.stage == "preprocess" for f in fails)


def test_each_fact_says_where_it_came_from(tmp_path, sklearn_model):
    from crossinfer._config import parse
    from crossinfer._inspect import describe
    from crossinfer._policy import DEFAULT

    models.save_module(models.PadOne(), tmp_path / "pad1.pt")
    sig = describe(parse(framework="pytorch", model_uri=str(tmp_path / "pad1.pt"),
                         model_class="tests.models:PadOne", feature_field="tokens",
                         postprocess="raw"), None, DEFAULT)
    assert (sig.input_shape, sig.input_dtype, sig.pad_value) == ((-1,), "int64", 1)
    assert sig.source("pad_value") == "Embedding.padding_idx = 1"
    assert "Embedding(50, 8, padding_idx=1)" in sig.source("input_shape")
    assert sig.output == "logits" and sig.num_classes == 3
    assert "do not sum to 1" in sig.source("output")
    sig = describe(parse(framework="sklearn", model_uri=str(sklearn_model[0]),
                         feature_field="features"), None, DEFAULT)
    assert (sig.input_shape, sig.input_dtype, sig.output, sig.allow_nan) == (
        (models.N_FEATURES,), "float64", "probabilities", False)
    assert sig.source("input_shape") == "LogisticRegression.n_features_in_ = 8"
    assert Signature.from_dict(sig.to_dict()) == sig
