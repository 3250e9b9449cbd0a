"""Bad configuration fails when the transform is applied, naming the argument and the fix."""

from __future__ import annotations

import re

import apache_beam as beam
import pytest

from crossinfer import CallableNotAllowedError, ConfigurationError, Inference, ModelLoadError
from crossinfer._policy import Policy, applied

ROW = beam.Row(id=1, features=[0.0] * 8, name="x")


def _apply(**kwargs):
    """Build (not run) a pipeline; errors must come from here, before any worker starts."""
    p = beam.Pipeline()
    _ = p | beam.Create([ROW]) | Inference(**kwargs)


@pytest.fixture
def sk(sklearn_model):
    return dict(framework="sklearn", model_uri=str(sklearn_model[0]), feature_field="features")


@pytest.mark.parametrize("change, error, words", [
    (dict(framework="tensorrt"), ConfigurationError, "framework='tensorrt' is not supported"),
    (dict(model_uri="/nonexistent/model.pkl"), ModelLoadError, "does not exist"),
    (dict(model_uri=None), ConfigurationError, "needs model_uri"),
    (dict(feature_fields=["id"]), ConfigurationError, "exactly one input source"),
    (dict(feature_field=None), ConfigurationError, "exactly one input source"),
    (dict(feature_field="nope"), ConfigurationError, "feature_field names field 'nope'"),
    (dict(feature_field="name"), ConfigurationError, "scalar field"),
    (dict(passthrough_fields=["id", "missing"]), ConfigurationError, "passthrough_fields names"),
    (dict(passthrough_fields="id"), ConfigurationError, "must be a list"),
    (dict(model_class="tests.models:MLP"), ConfigurationError, "only for framework='pytorch'"),
    (dict(handler="tests.models:sklearn_handler"), ConfigurationError, "only for framework='custom'"),
    (dict(postprocess="tests.models:label_name"), ConfigurationError, "needs output_schema"),
    (dict(postprocess="softmax"), ConfigurationError, "postprocess='softmax' is not supported"),
    (dict(postprocess="tests.models:label_name", output_schema={"name": "text"}),
     ConfigurationError, "not a Beam type name"),
    (dict(output_schema={"a": "int64"}), ConfigurationError, "output_schema is for a custom"),
    (dict(min_batch_size=10, max_batch_size=5), ConfigurationError, "larger than max_batch_size"),
    (dict(max_batch_size=0), ConfigurationError, "max_batch_size must be an integer in [1, 100000]"),
    (dict(max_batch_duration_secs=-1), ConfigurationError, "max_batch_duration_secs must be a positive number"),
    (dict(device="TPU"), ConfigurationError, "device='TPU'"),
    (dict(device="GPU"), ConfigurationError, "device is only for framework='pytorch'"),
    (dict(large_model="yes"), ConfigurationError, "large_model must be true or false"),
    (dict(model_key_field="name"), ConfigurationError, "needs both model_key_field"),
    (dict(passthrough_fields=["model_id"]), ConfigurationError, "field 'model_id'"),
    (dict(preprocess="os:system", feature_field=None), CallableNotAllowedError,
     "defined in 'os' itself"),
    (dict(preprocess="tests.models:np", feature_field=None), CallableNotAllowedError,
     "defined in 'tests.models' itself"),
    (dict(preprocess="print('hi')", feature_field=None), ConfigurationError,
     "not a callable name"),
    (dict(preprocess="nopackage.nomodule:f", feature_field=None), ConfigurationError,
     "cannot import module"),
])
def test_bad_configuration_fails_at_construction(sk, change, error, words):
    with pytest.raises(error) as raised:
        _apply(**{**sk, **change})
    assert words in str(raised.value)


def test_model_that_does_not_load(tmp_path):
    bad = tmp_path / "garbage.pkl"
    bad.write_bytes(b"this is not a pickle")
    with pytest.raises(ModelLoadError, match="did not load as a sklearn model"):
        _apply(framework="sklearn", model_uri=str(bad), feature_field="features")
    with pytest.raises(ModelLoadError, match="did not load as a onnx model"):
        _apply(framework="onnx", model_uri=str(bad), feature_field="features")
    with pytest.raises(ModelLoadError, match="TorchScript"):
        _apply(framework="pytorch", model_uri=str(bad), feature_field="features")


def test_state_dict_that_does_not_fit_model_params(mlp_model):
    with pytest.raises(ModelLoadError, match="size mismatch"):
        _apply(framework="pytorch", model_uri=str(mlp_model[0]), model_class="tests.models:MLP",
               model_params={"hidden": 7}, feature_field="features")


def test_feature_fields_must_match_the_model_width(sklearn_model):
    row = beam.Row(a=1.0, b=2.0)
    p = beam.Pipeline()
    with pytest.raises(ConfigurationError, match="names 2 fields but model .* takes 8"):
        _ = p | beam.Create([row]) | Inference(framework="sklearn",
                                               model_uri=str(sklearn_model[0]),
                                               feature_fields=["a", "b"])


def test_argmax_needs_a_classifier(tmp_path):
    import pickle

    import numpy as np
    from sklearn.linear_model import LinearRegression

    path = tmp_path / "reg.pkl"
    path.write_bytes(pickle.dumps(LinearRegression().fit(np.eye(8), np.arange(8))))
    with pytest.raises(ConfigurationError, match="use postprocess='regression'"):
        _apply(framework="sklearn", model_uri=str(path), feature_field="features")


def test_unschemad_input_is_rejected(sk):
    p = beam.Pipeline()
    with pytest.raises(ConfigurationError, match="schema'd rows"):
        _ = p | beam.Create([{"features": [0.0] * 8}]) | Inference(**sk)


def test_allowlist_admits_only_matching_functions_defined_in_their_module():
    policy = Policy(allowlist=("tests.models.*",))
    assert policy.resolve("tests.models:scaled_features", "preprocess").__name__ == \
        "scaled_features"
    with pytest.raises(CallableNotAllowedError, match="--allow 'os.*'"):
        policy.resolve("os:system", "preprocess")
    with pytest.raises(CallableNotAllowedError, match="defined in 'tests.models' itself"):
        policy.resolve("tests.models:pickle", "preprocess")  # a module it imported
    with pytest.raises(CallableNotAllowedError, match="dunder"):
        policy.resolve("tests.models:__loader__", "preprocess")
    with pytest.raises(CallableNotAllowedError, match="allowed now: nothing"):
        Policy(allowlist=()).resolve("tests.models:scaled_features", "preprocess")
    with pytest.raises(ConfigurationError, match="admits everything"):
        Policy(allowlist=("*",))


def test_allowlist_is_enforced_at_construction(sk):
    with applied(Policy(allowlist=("mypkg.*",))):
        with pytest.raises(CallableNotAllowedError, match="not allowed by this expansion service"):
            _apply(**{**sk, "feature_field": None, "preprocess": "tests.models:scaled_features"})


def test_java_rows_and_nested_maps_become_plain_dicts():
    from typing import NamedTuple

    from crossinfer._config import parse

    class Inner(NamedTuple):
        depth: int

    class Params(NamedTuple):  # how Java's withModelParams arrives: a Row, maybe nested
        hidden: int
        layers: Inner

    base = dict(framework="pytorch", model_uri="/m.pt", model_class="tests.models:MLP",
                feature_field="features")
    config = parse(**base, model_params=Params(16, Inner(2)))
    assert config.model_params == {"hidden": 16, "layers": {"depth": 2}}
    with pytest.raises(ConfigurationError, match="model_params must be a dict"):
        parse(**base, model_params=[1, 2])


@pytest.mark.parametrize("kwargs", [
    dict(framework="sklearn", model_uri="/m.pkl", feature_field="features"),
    dict(framework="pytorch", model_uri="/m.pt", model_class="tests.models:MLP",
         model_params={"hidden": 4}, feature_fields=["a", "b"], passthrough_fields=["id"]),
])
def test_config_round_trips_through_plain_kwargs(kwargs):
    """The expansion service sends Config.kwargs() to its inspection child, which parses them
    again: an absent argument must stay absent (model_params={} is refused for sklearn)."""
    from crossinfer._config import parse

    config = parse(**kwargs)
    assert parse(**config.kwargs()) == config


def test_a_request_from_another_crossinfer_version_is_refused():
    """The handshake: the Java library sends its version as client_version."""
    import importlib.metadata

    from crossinfer._config import parse

    mine = importlib.metadata.version("crossinfer")
    base = dict(framework="sklearn", model_uri="/m.pkl", feature_field="features")
    assert parse(**base, client_version=mine).client_version == mine
    with pytest.raises(ConfigurationError, match=(
            rf"the client is crossinfer 9\.9\.9, but the expansion service has crossinfer "
            rf"{re.escape(mine)}.*`pip install \.` from the root of a crossinfer 9\.9\.9 checkout")):
        parse(**base, client_version="9.9.9")
