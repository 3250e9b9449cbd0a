"""Mistakes a user makes, each caught with a message that names the real cause and the
argument that fixes it; and the Beam options the arguments reach (env_vars,
load_model_args, model_file_type, max_models_per_worker_hint)."""

from __future__ import annotations

import os

import apache_beam as beam
import joblib
import numpy as np
import pytest
import torch

from crossinfer import ConfigurationError, ModelLoadError
from tests import models, outputs
from tests.conftest import feature_rows, plan_for, run


def _apply(**kwargs):
    from crossinfer import Inference

    p = beam.Pipeline()
    _ = p | beam.Create([beam.Row(id=1, key="a", features=[0.0] * models.N_FEATURES)]) | \
        Inference(**kwargs)


# Item 5: messages that point at the real fix.

@pytest.mark.parametrize("model_class", ["tests.models:MLP", None])
def test_a_pickled_module_is_named_as_such(tmp_path, model_class):
    torch.save(models.MLP(), tmp_path / "whole.pt")  # the module, not its state_dict
    with pytest.raises(ModelLoadError, match=(
            r"holds a whole pickled module \(torch.save\(model\)\).*model.state_dict\(\).*"
            r"model_class")) as e:
        _apply(framework="pytorch", model_uri=str(tmp_path / "whole.pt"),
               model_class=model_class, feature_field="features")
    assert "corrupt" not in str(e.value)


def test_an_onnx_file_given_as_pytorch_says_onnx(mlp_onnx):
    with pytest.raises(ModelLoadError, match=r"the file is an ONNX model \(framework='onnx'\)") \
            as e:
        _apply(framework="pytorch", model_uri=str(mlp_onnx[0]), feature_field="features")
    assert "weights_only" not in str(e.value)


def test_a_pickle_given_as_onnx_says_pickle(sklearn_model):
    with pytest.raises(ModelLoadError, match=(
            r"did not load as a onnx model: the file is a Python pickle \(framework='sklearn'")):
        _apply(framework="onnx", model_uri=str(sklearn_model[0]), feature_field="features")


def test_weights_that_do_not_fit_model_params_blame_model_params(mlp_model):
    with pytest.raises(ModelLoadError, match=(
            r"holds weights that do not fit tests.models:MLP\(\*\*model_params\) with "
            r"model_params=\{'hidden': 32\}: .*size mismatch.*; set model_params")):
        _apply(framework="pytorch", model_uri=str(mlp_model[0]), model_class="tests.models:MLP",
               model_params={"hidden": 32}, feature_field="features")


def test_a_missing_file_in_models_names_its_key(sklearn_model, tmp_path):
    with pytest.raises(ModelLoadError, match=r"models\['b'\]=.*does not exist"):
        _apply(framework="sklearn", feature_field="features", model_key_field="key",
               models={"a": str(sklearn_model[0]), "b": str(tmp_path / "missing.pkl")})


def test_a_custom_handlers_dtype_mismatch_names_input_dtype(mlp_model):
    x, _ = models.dataset(n=4, seed=1)
    rows = [beam.Row(id=i, features=[float(v) for v in r]) for i, r in enumerate(x)]
    preds, fails = run(rows, framework="custom", handler="tests.outputs:float64_tensor_handler",
                       model_uri=str(mlp_model[0]), feature_field="features",
                       postprocess="raw", output="logits")
    assert not preds and len(fails) == 4
    assert all("set input_dtype" in f.error for f in fails), fails[0].error
    preds, fails = run(rows, framework="custom", handler="tests.outputs:float64_tensor_handler",
                       model_uri=str(mlp_model[0]), feature_field="features",
                       postprocess="raw", output="logits", input_dtype="float32")
    assert not fails and len(preds) == 4


def test_a_missing_inference_arg_says_inference_args(tmp_path):
    torch.save(outputs.ScaledMLP().state_dict(), tmp_path / "scaled.pt")
    kw = dict(framework="pytorch", model_uri=str(tmp_path / "scaled.pt"),
              model_class="tests.outputs:ScaledMLP", feature_field="features")
    with pytest.raises(ConfigurationError, match=(
            r"needs the argument 'scale', which crossinfer does not pass: give it in "
            r"inference_args")) as e:
        _apply(**kw)
    assert "input_shape" not in str(e.value)
    _apply(**kw, inference_args={"scale": 2.0})


def test_a_positional_argument_given_in_inference_args_is_not_an_input(tmp_path):
    model = outputs.PositionalScaledMLP().eval()
    torch.save(model.state_dict(), tmp_path / "scaled.pt")
    x, _ = models.dataset(n=10, seed=2)
    preds, fails = run(feature_rows(x), framework="pytorch", model_uri=str(tmp_path / "scaled.pt"),
                       model_class="tests.outputs:PositionalScaledMLP", feature_field="features",
                       passthrough_fields=["id"], postprocess="raw",
                       inference_args={"scale": 3.0})
    assert not fails
    with torch.no_grad():
        want = model(torch.from_numpy(x), 3.0).numpy()
    for p in preds:
        np.testing.assert_allclose(p.output, want[p.id], rtol=1e-5, atol=1e-6)


# Item 6: Beam options the arguments now reach.

def test_env_vars_are_set_on_the_worker_before_the_model_runs(sklearn_model, monkeypatch):
    monkeypatch.delenv("CROSSINFER_TEST_SCALE", raising=False)
    path, model = sklearn_model
    x, _ = models.dataset(n=12, seed=3)
    try:
        preds, fails = run(feature_rows(x), framework="sklearn", model_uri=str(path),
                           preprocess="tests.outputs:env_scaled_features",
                           passthrough_fields=["id"], env_vars={"CROSSINFER_TEST_SCALE": "2"})
    finally:  # Beam sets it in the process that runs the model: this one
        os.environ.pop("CROSSINFER_TEST_SCALE", None)
    assert not fails and len(preds) == 12
    proba = model.predict_proba(2 * x.astype(np.float64))
    assert {p.id: p.label for p in preds} == {i: int(proba[i].argmax()) for i in range(12)}
    for name, message in (("1BAD", "env_vars names '1BAD'"),
                          ("LD_PRELOAD", "env_vars may not set 'LD_PRELOAD'"),
                          ("PythonPath", "env_vars may not set 'PythonPath'")):
        with pytest.raises(ConfigurationError, match=message):
            _apply(framework="sklearn", model_uri=str(path), feature_field="features",
                   env_vars={name: "x"})


def test_model_file_type_reads_a_file_whatever_its_name(tmp_path, sklearn_model, mlp_model):
    x, _ = models.dataset(n=8, seed=4)
    joblib.dump(sklearn_model[1], tmp_path / "model.bin")
    preds, fails = run(feature_rows(x), framework="sklearn", model_uri=str(tmp_path / "model.bin"),
                       feature_field="features", passthrough_fields=["id"],
                       model_file_type="joblib")
    assert not fails and len(preds) == 8
    from safetensors.torch import save_file

    save_file(mlp_model[1].state_dict(), str(tmp_path / "weights.bin"))
    preds, fails = run(feature_rows(x), framework="pytorch", model_uri=str(tmp_path / "weights.bin"),
                       model_class="tests.models:MLP", feature_field="features",
                       passthrough_fields=["id"], model_file_type="safetensors")
    assert not fails and len(preds) == 8
    with pytest.raises(ConfigurationError, match="model_file_type='torchscript' takes no model_class"):
        _apply(framework="pytorch", model_uri=str(mlp_model[0]), model_class="tests.models:MLP",
               feature_field="features", model_file_type="torchscript")
    with pytest.raises(ConfigurationError, match="'joblib' is not a pytorch format"):
        _apply(framework="pytorch", model_uri=str(mlp_model[0]), model_class="tests.models:MLP",
               feature_field="features", model_file_type="joblib")


def test_load_model_args_reach_torch_load(mlp_model):
    x, _ = models.dataset(n=8, seed=5)
    kw = dict(framework="pytorch", model_uri=str(mlp_model[0]), model_class="tests.models:MLP",
              feature_field="features", passthrough_fields=["id"])
    preds, fails = run(feature_rows(x), load_model_args={"weights_only": False}, **kw)
    assert not fails and len(preds) == 8
    from crossinfer import _config
    from crossinfer.frameworks import _pytorch

    config = _config.parse(**kw, load_model_args={"weights_only": False})
    assert _pytorch.loads_code(config, str(mlp_model[0]))  # a trusted file, then
    assert not _pytorch.loads_code(_config.parse(**kw), str(mlp_model[0]))
    with pytest.raises(ConfigurationError, match=r"load_model_args\['pickle_module'\]"):
        _config.parse(**kw, load_model_args={"pickle_module": "os"})


def test_max_models_per_worker_hint_reaches_beams_keyed_handler(tmp_path, sklearn_model):
    x, _ = models.dataset(n=10, seed=6)
    rows = [beam.Row(id=r.id, key="ab"[r.id % 2], features=r.features) for r in feature_rows(x)]
    kw = dict(framework="sklearn", feature_field="features", passthrough_fields=["id"],
              model_key_field="key", models={"a": str(sklearn_model[0]),
                                             "b": str(sklearn_model[0])})
    preds, fails = run(rows, max_models_per_worker_hint=1, **kw)
    assert not fails and len(preds) == 10
    handler = plan_for(rows, max_models_per_worker_hint=1, **kw).handler
    assert handler._max_models_per_worker_hint == 1  # pylint: disable=protected-access
    with pytest.raises(ConfigurationError, match="give models and model_key_field"):
        _apply(framework="sklearn", model_uri=str(sklearn_model[0]), feature_field="features",
               max_models_per_worker_hint=2)
