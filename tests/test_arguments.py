"""The argument table: one description of every kwarg, from which the rest follows."""

from __future__ import annotations

import collections.abc
import inspect
import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import apache_beam as beam
import pytest

from crossinfer import ConfigurationError, Inference
from crossinfer._arguments import ARGUMENTS, WIRE_TYPES, markdown, service_caps
from crossinfer._config import Config, parse
from expansion_service._limits import TooLarge, check_values

ROOT = Path(__file__).resolve().parent.parent


def test_json_for_the_java_contract_test():
    out = subprocess.run([sys.executable, "-m", "crossinfer._arguments"], capture_output=True,
                         text=True, check=True, env=os.environ.copy(), timeout=60)
    table = json.loads(out.stdout)
    assert [a["name"] for a in table] == [a.name for a in ARGUMENTS]
    for a in table:
        assert {"name", "type", "frameworks", "doc", "java"} <= set(a)
        assert a["type"] in WIRE_TYPES and a["doc"] and a["java"]


def test_table_inference_and_config_agree():
    names = [a.name for a in ARGUMENTS]
    assert list(inspect.signature(Inference.__init__).parameters)[1:] == names
    assert [f.name for f in Config.__dataclass_fields__.values()] == names


def test_readme_table_is_the_rendered_table():
    assert markdown() in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("change, words", [
    (dict(model_copies=9), r"model_copies must be an integer in \[1, 8\]"),
    (dict(max_batch_size=10**7), r"max_batch_size must be an integer in \[1, 100000\]"),
    (dict(input_shape=[-1, -1]), "one variable-length axis"),
    (dict(input_shape=[0]), "input_shape must list"),
    (dict(input_dtype="object"), "input_dtype='object' is not supported"),
    (dict(output="softmax"), "output='softmax' is not supported"),
    (dict(output="named"), "output='named' .* needs a custom postprocess"),
    (dict(pad_value=float("nan")), "pad_value must be a finite number"),
    (dict(framework="onnx", pad_value=1, input_shape=[8]), "pad_value is for a variable-length"),
    (dict(inference_args={"f": object()}), "inference_args\\['f'\\] holds object"),
    (dict(inference_args={"x": 1}), "inference_args is only for framework="),
    (dict(unknown=1), "unknown arguments"),
])
def test_constraints(change, words):
    kw = dict(framework="sklearn", model_uri="m.pkl", feature_field="f")
    with pytest.raises(ConfigurationError, match=words):
        parse(**{**kw, **change})


def test_inference_keeps_its_type_hints():
    hints = typing.get_type_hints(Inference.__init__)
    assert hints["feature_fields"] == typing.Optional[collections.abc.Sequence[str]]
    assert hints["large_model"] is bool
    assert hints["model_updates"] == typing.Optional[typing.Union[str, beam.PCollection]]
    with pytest.raises(TypeError, match="unexpected keyword argument 'feature_feld'"):
        Inference("sklearn", "m.pkl", feature_feld="f")


@pytest.mark.parametrize("name", sorted(service_caps()))
def test_one_ceiling_for_the_library_and_the_service(name):
    # The service refuses, before building anything, exactly what the transform refuses.
    low, high = service_caps()[name]
    kw = dict(framework="sklearn", model_uri="m.pkl", feature_field="f")
    over = high + 1 if isinstance(high, int) else high * 1.5
    with pytest.raises(TooLarge, match=name):
        check_values({name: over})
    with pytest.raises(ConfigurationError, match=name):
        parse(**kw, **{name: over})
    check_values({name: high})
    assert getattr(parse(**kw, **{name: high}), name) == high


def test_zero_and_false_count_as_given_or_not_as_python_says():
    kw = dict(framework="onnx", model_uri="m.onnx", feature_field="f")
    with pytest.raises(ConfigurationError, match="output_index picks one"):
        parse(**kw, output_index=0, output="named", postprocess="a.b:c",
              output_schema={"x": "int64"})
    assert parse(**kw, model_copies=1, large_model=False).model_copies == 1
    with pytest.raises(ConfigurationError, match="model_copies cannot be combined with models"):
        parse(framework="onnx", models={"a": "m.onnx"}, model_key_field="k", feature_field="f",
              model_copies=2)
