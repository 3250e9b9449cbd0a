"""The argument table: one description of every kwarg, from which the rest follows."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from crossinfer import ConfigurationError, Inference
from crossinfer._arguments import ARGUMENTS, WIRE_TYPES, markdown
from crossinfer._config import Config, parse

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
