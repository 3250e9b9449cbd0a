"""Beam's own RunInference test scenarios (sklearn, pytorch, onnx), rewritten for rows.

Beam's tests feed bare arrays or tensors to a handler; here the same models and expected
values go through crossinfer.Inference as rows. Scenarios that have no row form are noted.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict

import apache_beam as beam
import joblib
import numpy as np
import pytest
import torch
from sklearn import svm

from crossinfer import ConfigurationError, ModelLoadError
from tests import models
from tests.conftest import run

ONE = [1.0, 5.0, -3.0, 10.0]
TWO = [[1.0, 5.0], [3.0, 10.0], [-14.0, 0.0], [0.5, 0.5]]


def _rows(values):
    return [beam.Row(id=i, x=v if isinstance(v, list) else [v]) for i, v in enumerate(values)]


def _linear(path, cls=models.LinearRegression, weight=((2.0,),), bias=(0.5,)):
    model = cls(input_dim=len(weight[0]), output_dim=1)
    model.load_state_dict(OrderedDict([("linear.weight", torch.tensor(weight)),
                                       ("linear.bias", torch.tensor(bias))]))
    torch.save(model.state_dict(), path)
    return path


def _by_id(preds, field="value"):
    return {p.id: getattr(p, field) for p in sorted(preds, key=lambda p: p.id)}


# scikit-learn (sklearn_inference_test.py)

def test_sklearn_pickled_and_joblib_svc(tmp_path):
    model = svm.SVC().fit([[0, 0], [1, 1]], [0, 1])  # no predict_proba: output "value"
    (tmp_path / "m.pkl").write_bytes(pickle.dumps(model))
    joblib.dump(model, tmp_path / "m.joblib")
    for path in (tmp_path / "m.pkl", tmp_path / "m.joblib"):
        preds, fails = run(_rows([[0.0, 0.0], [1.0, 1.0]]), framework="sklearn",
                           model_uri=str(path), feature_field="x", passthrough_fields=["id"],
                           postprocess="regression")
        assert not fails and _by_id(preds) == {0: 0.0, 1: 1.0}
    with pytest.raises(ConfigurationError, match="use postprocess='regression'"):
        run(_rows([[0.0, 0.0]]), framework="sklearn", model_uri=str(tmp_path / "m.pkl"),
            feature_field="x")


def test_sklearn_predict_output_is_vectorised(tmp_path):
    (tmp_path / "sum.pkl").write_bytes(pickle.dumps(models.SumModel()))
    rows = _rows([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    models.SumModel.calls = 0
    preds, fails = run(rows, framework="sklearn", model_uri=str(tmp_path / "sum.pkl"),
                       feature_field="x", passthrough_fields=["id"], postprocess="regression",
                       min_batch_size=3, max_batch_size=3,
                       on_built=lambda: setattr(models.SumModel, "calls", 0))
    assert not fails and _by_id(preds) == {0: 6.0, 1: 15.0, 2: 24.0}
    assert models.SumModel.calls == 1  # three rows, one predict call


def test_sklearn_bad_file_fails_at_construction():
    with pytest.raises(ModelLoadError, match="does not exist"):
        run(_rows([[0.0, 0.0]]), framework="sklearn", model_uri="/var/bad_file_name",
            feature_field="x")


def test_sklearn_keyed_models(tmp_path):
    # Beam's KeyedModelHandler scenario: each row's key picks its model.
    (tmp_path / "a.pkl").write_bytes(pickle.dumps(models.SumModel(2)))
    b = svm.SVC().fit([[0, 0], [1, 1]], [0, 1])
    (tmp_path / "b.pkl").write_bytes(pickle.dumps(b))
    rows = [beam.Row(id=i, key="ab"[i % 2], x=[float(i % 3), float(i % 2)]) for i in range(6)]
    preds, fails = run(rows, framework="sklearn", models={"a": str(tmp_path / "a.pkl"),
                                                          "b": str(tmp_path / "b.pkl")},
                       model_key_field="key", feature_field="x", passthrough_fields=["id"],
                       postprocess="regression")
    assert not fails
    want = {r.id: float(sum(r.x)) if r.key == "a" else float(b.predict([r.x])[0]) for r in rows}
    assert _by_id(preds) == want

# Not expressible for rows: Beam's pandas DataFrame scenarios (a ColumnTransformer over named
# string and number columns); crossinfer feeds one numeric array per row.


# PyTorch (pytorch_inference_test.py)

def test_pytorch_single_tensor_feature(tmp_path):
    path = _linear(tmp_path / "lin.pt")
    preds, fails = run(_rows(ONE), framework="pytorch", model_uri=str(path),
                       model_class="tests.models:LinearRegression",
                       model_params={"input_dim": 1, "output_dim": 1}, feature_field="x",
                       passthrough_fields=["id"], postprocess="regression")
    assert not fails
    assert _by_id(preds) == pytest.approx({i: v * 2.0 + 0.5 for i, v in enumerate(ONE)})


def test_pytorch_multiple_tensor_features(tmp_path):
    path = _linear(tmp_path / "lin2.pt", weight=((2.0, 3.0),))
    preds, fails = run(_rows(TWO), framework="pytorch", model_uri=str(path),
                       model_class="tests.models:LinearRegression",
                       model_params={"input_dim": 2, "output_dim": 1}, feature_field="x",
                       passthrough_fields=["id"], postprocess="regression")
    assert not fails
    assert _by_id(preds) == pytest.approx({i: a * 2 + b * 3 + 0.5 for i, (a, b) in enumerate(TWO)})


def test_pytorch_dict_output(tmp_path):
    path = _linear(tmp_path / "dict.pt", cls=models.LinearRegressionDict, weight=((2.0, 3.0),))
    preds, fails = run(_rows(TWO), framework="pytorch", model_uri=str(path),
                       model_class="tests.models:LinearRegressionDict",
                       model_params={"input_dim": 2, "output_dim": 1}, feature_field="x",
                       passthrough_fields=["id"], output="named",
                       postprocess="tests.models:named_pair",
                       output_schema={"output1": "float64", "output2": "float64"})
    assert not fails
    for p in preds:
        a, b = TWO[p.id]
        assert p.output1 == p.output2 == pytest.approx(a * 2 + b * 3 + 0.5)


def test_pytorch_inference_args(tmp_path):
    path = _linear(tmp_path / "args.pt", cls=models.LinearRegressionExtraArgs)
    kw = dict(framework="pytorch", model_uri=str(path),
              model_class="tests.models:LinearRegressionExtraArgs",
              model_params={"input_dim": 1, "output_dim": 1}, feature_field="x",
              passthrough_fields=["id"], postprocess="regression")
    preds, fails = run(_rows(ONE), inference_args={"prediction_param_array": [1, 2],
                                                   "prediction_param_bool": True}, **kw)
    assert not fails
    assert _by_id(preds) == pytest.approx({i: v * 2.0 + 0.5 for i, v in enumerate(ONE)})


def test_pytorch_custom_inference_fn_through_a_custom_handler(tmp_path):
    # Beam's make_tensor_model_fn('generate') scenario.
    path = _linear(tmp_path / "gen.pt")
    preds, fails = run(_rows(ONE), framework="custom", handler="tests.models:generate_handler",
                       model_uri=str(path), feature_field="x", input_dtype="float32",
                       passthrough_fields=["id"], postprocess="regression")
    assert not fails
    assert _by_id(preds) == pytest.approx({i: v * 2.0 + 1.0 for i, v in enumerate(ONE)})


def test_pytorch_keyed_tensors_through_a_custom_handler(tmp_path):
    path = _linear(tmp_path / "keyed.pt", cls=models.KeyedLinear)
    rows = [beam.Row(id=i, k1=k1, k2=k2) for i, (k1, k2) in
            enumerate([(1.0, 1.5), (5.0, 5.5), (-3.0, -3.5), (10.0, 10.5)])]
    preds, fails = run(rows, framework="custom", handler="tests.models:keyed_handler",
                       model_uri=str(path), preprocess="tests.models:two_keys",
                       passthrough_fields=["id"], postprocess="tests.models:first_value",
                       output_schema={"value": "float64"})
    assert not fails
    assert _by_id(preds) == pytest.approx(
        {r.id: (r.k1 * 2 + 0.5) + (r.k2 * 2 + 0.5) for r in rows})


def test_pytorch_torchscript_and_bad_files(tmp_path):
    model = models.LinearRegression()
    model.load_state_dict(OrderedDict([("linear.weight", torch.tensor([[2.0]])),
                                       ("linear.bias", torch.tensor([0.5]))]))
    torch.jit.script(model.eval()).save(str(tmp_path / "lin.torchscript"))
    preds, fails = run(_rows(ONE), framework="pytorch", model_uri=str(tmp_path / "lin.torchscript"),
                       feature_field="x", passthrough_fields=["id"], postprocess="regression")
    assert not fails
    assert _by_id(preds) == pytest.approx({i: v * 2.0 + 0.5 for i, v in enumerate(ONE)})
    with pytest.raises(ModelLoadError, match="does not exist"):
        run(_rows(ONE), framework="pytorch", model_uri=str(tmp_path / "missing.pt"),
            model_class="tests.models:LinearRegression", feature_field="x")
    with pytest.raises(ConfigurationError, match="size mismatch"):
        run(_rows(ONE), framework="pytorch", model_uri=str(_linear(tmp_path / "l.pt")),
            model_class="tests.models:LinearRegression",
            model_params={"input_dim": 3, "output_dim": 1}, feature_field="x")


# ONNX (onnx_inference_test.py): the same linear models, exported.

def _onnx_linear(tmp_path, weight):
    model = models.LinearRegression(input_dim=len(weight[0]), output_dim=1)
    model.load_state_dict(OrderedDict([("linear.weight", torch.tensor(weight)),
                                       ("linear.bias", torch.tensor([0.5]))]))
    path = tmp_path / "lin.onnx"
    models.export_onnx(model.eval(), path, torch.zeros(2, len(weight[0])))
    return path


@pytest.mark.parametrize("values, weight, want", [
    (ONE, ((2.0,),), [v * 2.0 + 0.5 for v in ONE]),
    (TWO, ((2.0, 3.0),), [a * 2 + b * 3 + 0.5 for a, b in TWO]),
])
def test_onnx_linear_regression(tmp_path, values, weight, want):
    path = _onnx_linear(tmp_path, weight)
    preds, fails = run(_rows(values), framework="onnx", model_uri=str(path), feature_field="x",
                       passthrough_fields=["id"], postprocess="regression")
    assert not fails
    assert _by_id(preds) == pytest.approx(dict(enumerate(want)))


def test_onnx_bad_input_and_bad_file(tmp_path):
    path = _onnx_linear(tmp_path, ((2.0, 3.0),))
    rows = _rows(TWO) + [beam.Row(id=9, x=["a", "b"])]
    preds, fails = run(rows, framework="onnx", model_uri=str(path), feature_field="x",
                       passthrough_fields=["id"], postprocess="regression")
    assert len(preds) == 4 and [f.stage for f in fails] == ["preprocess"]
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a graph")
    with pytest.raises(ModelLoadError, match="did not load as a onnx model"):
        run(_rows(TWO), framework="onnx", model_uri=str(bad), feature_field="x")
