"""``crossinfer.Inference``: preprocess -> Beam RunInference -> postprocess, rows in and out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference
from apache_beam.pvalue import TaggedOutput

from crossinfer import _config, _plan
from crossinfer._errors import InputError
from crossinfer._handler import Failed, Item, describe
from crossinfer._rows import to_json
from crossinfer._schemas import Failure

PREDICTIONS = "predictions"
FAILURES = "failures"


def _failure(row: Any, stage: str, error: str) -> TaggedOutput:
    return TaggedOutput(FAILURES, Failure(to_json(row), stage, error))


class _Preprocess(beam.DoFn):
    """row -> Item (or (model key, Item)); a row that cannot be read goes to failures."""

    def __init__(self, plan: _plan.Plan) -> None:
        self._extract = plan.extract
        self._specs = plan.specs
        self._key_field = plan.key_field

    def process(self, row: Any):
        try:
            if self._key_field is None:
                yield Item(self._extract(row, self._specs[None]), row)
                return
            key = getattr(row, self._key_field)
            spec = self._specs.get(key)
            if spec is None:
                raise InputError(
                    f"{self._key_field}={key!r} names no model; models has "
                    f"{sorted(k for k in self._specs if k is not None)}")
            yield key, Item(self._extract(row, spec), row)
        except Exception as e:  # pylint: disable=broad-except
            yield _failure(row, "preprocess", describe(e))


class _Postprocess(beam.DoFn):
    """Scored -> prediction row; Failed and postprocess errors -> failures."""

    def __init__(self, plan: _plan.Plan) -> None:
        self._post = plan.postprocess
        self._passthrough = plan.passthrough

    def process(self, outcome: Any):
        if isinstance(outcome, tuple) and len(outcome) == 2 and not hasattr(outcome, "_fields"):
            outcome = outcome[1]  # keyed: (model key, outcome)
        if isinstance(outcome, Failed):
            yield _failure(outcome.row, outcome.stage, outcome.error)
            return
        row = outcome.row
        try:
            fields = {name: getattr(row, name) for name in self._passthrough}
            fields.update(self._post(outcome.inference, outcome.model_id, row))
            fields["model_id"] = outcome.model_id
            yield beam.Row(**fields)
        except Exception as e:  # pylint: disable=broad-except
            yield _failure(row, "postprocess", describe(e))


class Inference(beam.PTransform):
    """Run a PyTorch, scikit-learn, ONNX or custom model over schema'd rows.

    Every argument is a plain value (see the project's CONTRACT.md). Applying the transform
    checks them all, loads each model once and types both outputs; it returns
    ``{"predictions": ..., "failures": ...}``, and every input row lands in exactly one.
    """

    def __init__(
        self,
        framework: Optional[str] = None,
        model_uri: Optional[str] = None,
        *,
        model_class: Optional[str] = None,
        model_params: Optional[Mapping[str, Any]] = None,
        handler: Optional[str] = None,
        feature_field: Optional[str] = None,
        feature_fields: Optional[Sequence[str]] = None,
        passthrough_fields: Optional[Sequence[str]] = None,
        preprocess: Optional[str] = None,
        postprocess: str = "argmax",
        output_schema: Optional[Mapping[str, str]] = None,
        min_batch_size: Optional[int] = None,
        max_batch_size: Optional[int] = None,
        max_batch_duration_secs: Optional[Union[int, float]] = None,
        large_model: bool = False,
        model_copies: Optional[int] = None,
        model_key_field: Optional[str] = None,
        models: Optional[Mapping[str, str]] = None,
        device: str = "CPU",
    ) -> None:
        super().__init__()
        # Stored as given; checked in one place, expand(), like scikit-learn's fit().
        self._kwargs = dict(
            framework=framework, model_uri=model_uri, model_class=model_class,
            model_params=model_params, handler=handler, feature_field=feature_field,
            feature_fields=feature_fields, passthrough_fields=passthrough_fields,
            preprocess=preprocess, postprocess=postprocess, output_schema=output_schema,
            min_batch_size=min_batch_size, max_batch_size=max_batch_size,
            max_batch_duration_secs=max_batch_duration_secs, large_model=large_model,
            model_copies=model_copies, model_key_field=model_key_field, models=models,
            device=device)

    def default_label(self) -> str:
        return f"Inference({self._kwargs['framework']})"

    def expand(self, pcoll: beam.PCollection) -> dict[str, beam.PCollection]:
        plan = _plan.build(_config.parse(**self._kwargs), pcoll.element_type)
        pre = pcoll | "Preprocess" >> beam.ParDo(_Preprocess(plan)).with_outputs(
            FAILURES, main="items")
        scored = pre.items | "RunInference" >> RunInference(plan.handler)
        post = scored | "Postprocess" >> beam.ParDo(_Postprocess(plan)).with_outputs(
            FAILURES, main=PREDICTIONS)
        predictions = post[PREDICTIONS]
        predictions.element_type = plan.prediction_type
        failures = ((pre[FAILURES], post[FAILURES])
                    | "Failures" >> beam.Flatten().with_output_types(Failure))
        return {PREDICTIONS: predictions, FAILURES: failures}
