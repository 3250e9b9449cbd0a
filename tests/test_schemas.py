"""Both outputs are typed Beam rows before the pipeline runs, so another SDK can decode them."""

from __future__ import annotations

from typing import Any

import apache_beam as beam
import pytest
from apache_beam.portability import common_urns
from apache_beam.portability.api import schema_pb2

from crossinfer import Inference
from crossinfer._schemas import parse_type
from crossinfer._errors import ConfigurationError
from tests import models

ATOMIC = schema_pb2.AtomicType


def _output_schemas(**kwargs: Any) -> dict[str, dict[str, Any]]:
    """Name -> {field: FieldType proto} of each output, read from the pipeline proto."""
    p = beam.Pipeline()
    out = (p | beam.Create([models.FeatureRow(1, [0.0] * models.N_FEATURES)])
           .with_output_types(models.FeatureRow) | Inference(**kwargs))
    proto, context = p.to_runner_api(return_context=True)
    result = {}
    for name, pcoll in out.items():
        pcoll_proto = proto.components.pcollections[context.pcollections.get_id(pcoll)]
        coder = proto.components.coders[pcoll_proto.coder_id]
        assert coder.spec.urn == common_urns.coders.ROW.urn, name
        schema = schema_pb2.Schema.FromString(coder.spec.payload)
        result[name] = {f.name: f.type for f in schema.fields}
    return result


def test_argmax_predictions_and_failures_are_row_coded(sklearn_model):
    schemas = _output_schemas(framework="sklearn", model_uri=str(sklearn_model[0]),
                              feature_field="features", passthrough_fields=["id"])
    pred = schemas["predictions"]
    assert list(pred) == ["id", "label", "score", "model_id"]
    assert pred["id"].atomic_type == ATOMIC.INT64
    assert pred["label"].atomic_type == ATOMIC.INT64
    assert pred["score"].atomic_type == ATOMIC.DOUBLE
    assert pred["model_id"].atomic_type == ATOMIC.STRING
    assert list(schemas["failures"]) == ["element", "stage", "error"]
    assert all(t.atomic_type == ATOMIC.STRING for t in schemas["failures"].values())


def test_raw_and_custom_output_schema_types(mlp_model):
    raw = _output_schemas(framework="pytorch", model_uri=str(mlp_model[0]),
                          model_class="tests.models:MLP", feature_field="features",
                          postprocess="raw")["predictions"]
    assert raw["output"].array_type.element_type.atomic_type == ATOMIC.DOUBLE
    custom = _output_schemas(framework="pytorch", model_uri=str(mlp_model[0]),
                             model_class="tests.models:MLP", feature_field="features",
                             postprocess="tests.models:label_name",
                             output_schema={"name": "string", "top": "float32"})["predictions"]
    assert list(custom) == ["name", "top", "model_id"]
    assert custom["name"].atomic_type == ATOMIC.STRING
    assert custom["top"].atomic_type == ATOMIC.FLOAT


@pytest.mark.parametrize("name, ok", [
    ("int64", True), ("array<float64>", True), ("optional<string>", True),
    ("map<string,int32>", True), ("array<array<int64>>", True), ("decimal", False),
    ("array<>", False),
])
def test_type_names(name, ok):
    if ok:
        parse_type(name)
    else:
        with pytest.raises(ConfigurationError, match="not a Beam type name"):
            parse_type(name)
