"""What a model returns is used whole, or refused at construction: padding that changes a
row's output, tuples and dicts of outputs, named classes, and postprocess results that do not
fit the output schema. The model called directly is the oracle."""

from __future__ import annotations

import logging
import pickle

import apache_beam as beam
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from sklearn.linear_model import LogisticRegression

from crossinfer import ConfigurationError
from tests import models, outputs
from tests.conftest import feature_rows, run


def _apply(rows=None, **kwargs):
    from crossinfer import Inference

    p = beam.Pipeline()
    rows = rows or [beam.Row(id=1, features=[0.0] * models.N_FEATURES)]
    _ = p | beam.Create(rows) | Inference(**kwargs)


def _token_rows(n: int, seed: int) -> list[beam.Row]:
    rng = np.random.default_rng(seed)
    return [beam.Row(id=i, features=rng.integers(1, models.VOCAB, size=int(k)).tolist())
            for i, k in enumerate(rng.integers(1, 20, size=n))]


# Item 1: padding is checked, whoever states the pad value.

def test_a_stated_pad_value_that_changes_the_output_is_refused_with_the_models_own(tmp_path):
    path = tmp_path / "mean.pt"
    models.make_sequence_model(path)  # Embedding(padding_idx=0), ignores token 0
    with pytest.raises(ConfigurationError, match=(
            r"pad_value=1 \(the pad_value argument\) changes .*by up to \d[\d.e-]*; the "
            r"model's metadata \(Embedding.padding_idx = 0\) suggests pad_value=0")):
        _apply(framework="pytorch", model_uri=str(path), model_class="tests.models:MeanEmbedding",
               feature_field="features", pad_value=1)


def test_a_stated_pad_value_is_refused_when_every_padding_changes_the_output(tmp_path):
    torch.save(models.MeanEmbeddingNoPadIdx().state_dict(), tmp_path / "mean.pt")
    with pytest.raises(ConfigurationError, match="or leave it out: rows of different lengths"):
        _apply(framework="pytorch", model_uri=str(tmp_path / "mean.pt"),
               model_class="tests.models:MeanEmbeddingNoPadIdx", feature_field="features",
               pad_value=0)


def test_a_model_changed_by_any_padding_gets_exact_length_groups(tmp_path, caplog):
    torch.manual_seed(2)
    model = models.MeanEmbeddingNoPadIdx().eval()
    torch.save(model.state_dict(), tmp_path / "mean.pt")
    rows = _token_rows(40, seed=5)
    with caplog.at_level(logging.INFO, logger="crossinfer"):
        preds, fails = run(rows, framework="pytorch", model_uri=str(tmp_path / "mean.pt"),
                           model_class="tests.models:MeanEmbeddingNoPadIdx",
                           feature_field="features", passthrough_fields=["id"],
                           postprocess="raw", min_batch_size=40, max_batch_size=40)
    assert not fails and len(preds) == 40
    with torch.no_grad():
        for p in preds:  # exactly what the model says for the row alone
            alone = model(torch.tensor([rows[p.id].features]))[0].numpy()
            np.testing.assert_allclose(p.output, alone, rtol=1e-6, atol=1e-7)
    assert "groups of equal length, without padding" in caplog.text


# Item 2: every output is used or the model is refused.

@pytest.fixture(scope="module")
def two_heads(tmp_path_factory):
    torch.manual_seed(3)
    model = outputs.TwoHeads().eval()
    path = tmp_path_factory.mktemp("heads") / "heads.pt"
    torch.save(model.state_dict(), path)
    return path, model


def test_a_tuple_output_is_refused_without_saying_which(two_heads):
    with pytest.raises(ConfigurationError, match=(
            r"returns a tuple of 2 outputs \(per row: \[3\], \[1\]\); say which to use: "
            r"output_index=0")):
        _apply(framework="pytorch", model_uri=str(two_heads[0]),
               model_class="tests.outputs:TwoHeads", feature_field="features")


def test_output_index_picks_one_of_a_tuple(two_heads):
    path, model = two_heads
    x, _ = models.dataset(n=30, seed=4)
    kw = dict(framework="pytorch", model_uri=str(path), model_class="tests.outputs:TwoHeads",
              feature_field="features", passthrough_fields=["id"])
    labels, fails = run(feature_rows(x), output_index=0, **kw)
    values, fails2 = run(feature_rows(x), output_index=1, postprocess="regression", **kw)
    assert not fails and not fails2
    with torch.no_grad():
        logits, value = model(torch.from_numpy(x))
    assert {p.id: p.label for p in labels} == {i: int(logits[i].argmax()) for i in range(30)}
    for p in values:
        assert p.value == pytest.approx(float(value[p.id, 0]), rel=1e-5, abs=1e-6)


def test_output_named_passes_every_element_of_a_tuple(two_heads):
    path, model = two_heads
    x, _ = models.dataset(n=20, seed=6)
    preds, fails = run(feature_rows(x), framework="pytorch", model_uri=str(path),
                       model_class="tests.outputs:TwoHeads", feature_field="features",
                       passthrough_fields=["id"], output="named",
                       postprocess="tests.outputs:policy_and_value",
                       output_schema={"action": "int64", "value": "float64"})
    assert not fails and len(preds) == 20
    with torch.no_grad():
        logits, value = model(torch.from_numpy(x))
    for p in preds:
        assert p.action == int(logits[p.id].argmax())
        assert p.value == pytest.approx(float(value[p.id, 0]), rel=1e-5, abs=1e-6)


def test_sklearn_predict_returning_a_dict_works_with_output_named(tmp_path):
    x, _ = models.dataset(n=25, seed=7)
    model = outputs.DictRegressor().fit(x)
    with open(tmp_path / "dict.pkl", "wb") as f:
        pickle.dump(model, f)
    preds, fails = run(feature_rows(x), framework="sklearn", model_uri=str(tmp_path / "dict.pkl"),
                       feature_field="features", passthrough_fields=["id"], output="named",
                       postprocess="tests.outputs:mean_and_total",
                       output_schema={"mean": "float64", "total": "float64"})
    assert not fails and len(preds) == 25
    want = model.predict(x.astype(np.float64))
    for p in preds:
        assert p.mean == pytest.approx(want["mean"][p.id])
        assert p.total == pytest.approx(want["total"][p.id])


def test_onnx_output_index_picks_one_of_several_outputs(tmp_path, mlp_onnx):
    path = tmp_path / "two.onnx"
    graph = onnx.load(str(mlp_onnx[0]))
    # A second output: the logits doubled.
    graph.graph.node.append(helper.make_node("Add", ["y", "y"], ["twice"]))
    graph.graph.output.append(helper.make_tensor_value_info("twice", TensorProto.FLOAT,
                                                            ["batch", 3]))
    onnx.save(graph, str(path))
    with pytest.raises(ConfigurationError, match="has 2 outputs .*say which to use"):
        _apply(framework="onnx", model_uri=str(path), feature_field="features")
    x, _ = models.dataset(n=10, seed=8)
    preds, fails = run(feature_rows(x), framework="onnx", model_uri=str(path),
                       feature_field="features", passthrough_fields=["id"], postprocess="raw",
                       output_index=1)
    assert not fails
    want = ort.InferenceSession(str(path)).run(["twice"], {"x": x})[0]
    for p in preds:
        np.testing.assert_allclose(p.output, want[p.id], rtol=1e-5)


# Item 3: class names.

@pytest.fixture(scope="module")
def fish(tmp_path_factory):
    x, y = models.dataset(seed=9)
    names = np.array(["eel", "cod", "ray"])[y]
    model = LogisticRegression(max_iter=500).fit(x, names)
    path = tmp_path_factory.mktemp("fish") / "fish.pkl"
    with open(path, "wb") as f:
        pickle.dump(model, f)
    return path, model


def test_string_classes_come_as_label_name(fish):
    path, model = fish
    x, _ = models.dataset(n=40, seed=10)
    preds, fails = run(feature_rows(x), framework="sklearn", model_uri=str(path),
                       feature_field="features", passthrough_fields=["id"])
    assert not fails and len(preds) == 40
    want = model.predict(x.astype(np.float64))
    assert {p.id: p.label_name for p in preds} == {i: str(want[i]) for i in range(40)}
    assert all(model.classes_[p.label] == p.label_name for p in preds)


@pytest.mark.parametrize("kwargs", [dict(postprocess="regression"), dict(output="value"),
                                    dict(postprocess="raw", output="value")])
def test_numeric_settings_on_a_string_classifier_are_configuration_errors(fish, kwargs):
    with pytest.raises(ConfigurationError, match=r"returns string values \(e\.g\. '(eel|cod|ray)'\), not numbers"):
        _apply(framework="sklearn", model_uri=str(fish[0]), feature_field="features", **kwargs)


def test_labels_name_a_torch_models_classes(mlp_model):
    path, model = mlp_model
    x, _ = models.dataset(n=20, seed=11)
    names = ["low", "mid", "high"]
    preds, fails = run(feature_rows(x), framework="pytorch", model_uri=str(path),
                       model_class="tests.models:MLP", feature_field="features",
                       passthrough_fields=["id"], labels=names)
    assert not fails
    with torch.no_grad():
        top = model(torch.from_numpy(x)).argmax(1).numpy()
    assert {p.id: p.label_name for p in preds} == {i: names[top[i]] for i in range(20)}
    with pytest.raises(ConfigurationError, match="labels names 2 classes .* returns 3 class"):
        _apply(framework="pytorch", model_uri=str(path), model_class="tests.models:MLP",
               feature_field="features", labels=["a", "b"])


def _onnx_classifier(path, zipmap: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A linear classifier as scikit-learn exporters write it: ai.onnx.ml LinearClassifier
    (label + scores), optionally a ZipMap of the scores."""
    rng = np.random.default_rng(12)
    coef, intercept = rng.normal(size=(3, models.N_FEATURES)), rng.normal(size=3)
    names = ["eel", "cod", "ray"]
    nodes = [helper.make_node(
        "LinearClassifier", ["x"], ["label", "scores"], domain="ai.onnx.ml",
        coefficients=coef.ravel().tolist(), intercepts=intercept.tolist(),
        classlabels_strings=names, post_transform="SOFTMAX")]
    outputs_ = [helper.make_tensor_value_info("label", TensorProto.STRING, ["N"])]
    if zipmap:
        nodes.append(helper.make_node("ZipMap", ["scores"], ["probabilities"],
                                      domain="ai.onnx.ml", classlabels_strings=names))
        outputs_.append(helper.make_value_info("probabilities", helper.make_sequence_type_proto(
            helper.make_map_type_proto(TensorProto.STRING, helper.make_tensor_type_proto(
                TensorProto.FLOAT, [])))))
    else:
        outputs_.append(helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3]))
    graph = helper.make_graph(nodes, "classifier", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", models.N_FEATURES])], outputs_)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("ai.onnx.ml", 1)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return coef, intercept, names


@pytest.mark.parametrize("zipmap", [False, True])
def test_an_exported_onnx_classifier_gives_its_class_names(tmp_path, zipmap):
    path = tmp_path / "clf.onnx"
    _onnx_classifier(path, zipmap)
    x, _ = models.dataset(n=30, seed=13)
    preds, fails = run(feature_rows(x), framework="onnx", model_uri=str(path),
                       feature_field="features", passthrough_fields=["id"])
    assert not fails and len(preds) == 30
    session = ort.InferenceSession(str(path))
    label, scores = session.run(None, {"x": x})
    for p in preds:
        assert p.label_name == label[p.id]
        score = scores[p.id][label[p.id]] if zipmap else scores[p.id].max()
        assert p.score == pytest.approx(float(score), rel=1e-5)


# Item 4: the postprocess is checked against the output schema on the probe's output.

def test_regression_on_a_wide_output_fails_at_construction(mlp_model):
    with pytest.raises(ConfigurationError, match=(
            r"postprocess='regression' needs one value per row, but .* returns 3")):
        _apply(framework="pytorch", model_uri=str(mlp_model[0]), model_class="tests.models:MLP",
               feature_field="features", postprocess="regression")


@pytest.mark.parametrize("postprocess, schema, message", [
    ("tests.outputs:a_float", {"top": "float64"}, "returned float, not a dict"),
    ("tests.outputs:wrong_fields", {"best": "float64"},
     r"returned fields \['top'\]; output_schema declares \['best'\]"),
    ("tests.outputs:wrong_fields", {"top": "string"}, "where output_schema says string"),
])
def test_a_custom_postprocess_that_does_not_fit_its_schema_fails_at_construction(
        mlp_model, postprocess, schema, message):
    with pytest.raises(ConfigurationError, match=message):
        _apply(framework="pytorch", model_uri=str(mlp_model[0]), model_class="tests.models:MLP",
               feature_field="features", postprocess=postprocess, output_schema=schema)
