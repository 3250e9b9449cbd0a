"""``crossinfer.Inference``: preprocess -> Beam RunInference -> postprocess, rows in and out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference

from crossinfer import _beam, _config, _plan, _policy, _updates
from crossinfer._emit import FAILURES, Postprocess, failure
from crossinfer._errors import InputError, describe
from crossinfer._schemas import Failure

PREDICTIONS = "predictions"


class _KeyRows(beam.DoFn):
    """Multi-model: row -> (model key, row); a row whose key names no model is a failure."""

    def __init__(self, plan: _plan.Plan) -> None:
        self._specs = plan.specs
        self._key_field = plan.key_field

    def process(self, row: Any):
        try:
            key = getattr(row, self._key_field)
            if key is None or key not in self._specs:
                raise InputError(
                    f"{self._key_field}={key!r} names no model; models has "
                    f"{sorted(k for k in self._specs if k is not None)}")
            yield key, row
        except Exception as e:  # pylint: disable=broad-except
            yield failure(row, "preprocess", describe(e))


class Inference(beam.PTransform):
    """Run a PyTorch, scikit-learn, ONNX or custom model over schema'd rows.

    Every argument is a plain value, described in ``crossinfer._arguments``. Applying it
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
        blocks: bool = False,
        input_shape: Optional[Sequence[int]] = None,
        input_dtype: Optional[str] = None,
        pad_value: Optional[Union[int, float]] = None,
        output: Optional[str] = None,
        inference_args: Optional[Mapping[str, Any]] = None,
        labels: Optional[Sequence[str]] = None,
        output_index: Optional[int] = None,
        env_vars: Optional[Mapping[str, str]] = None,
        load_model_args: Optional[Mapping[str, Any]] = None,
        model_file_type: Optional[str] = None,
        max_models_per_worker_hint: Optional[int] = None,
        model_updates: Optional[Union[str, beam.PCollection]] = None,
        model_update_interval_secs: Optional[Union[int, float]] = None,
        client_version: Optional[str] = None,
    ) -> None:
        super().__init__()
        _beam.check_library()
        # What callables and model files this transform may use: a Python pipeline's own
        # (the default), or the expansion service's, which builds the request under it.
        self._policy = _policy.current()
        # A PCollection of ModelMetadata is not a plain value: kept aside, checked in expand.
        self._updates = model_updates if isinstance(model_updates, beam.PCollection) else None
        if self._updates is not None:
            model_updates = None
        # Stored as given; checked in one place, expand(), like scikit-learn's fit().
        self._kwargs = dict(
            framework=framework, model_uri=model_uri, model_class=model_class,
            model_params=model_params, handler=handler, feature_field=feature_field,
            feature_fields=feature_fields, passthrough_fields=passthrough_fields,
            preprocess=preprocess, postprocess=postprocess, output_schema=output_schema,
            min_batch_size=min_batch_size, max_batch_size=max_batch_size,
            max_batch_duration_secs=max_batch_duration_secs, large_model=large_model,
            model_copies=model_copies, model_key_field=model_key_field, models=models,
            device=device, blocks=blocks, input_shape=input_shape, input_dtype=input_dtype,
            pad_value=pad_value, output=output, inference_args=inference_args,
            labels=labels, output_index=output_index, env_vars=env_vars,
            load_model_args=load_model_args, model_file_type=model_file_type,
            max_models_per_worker_hint=max_models_per_worker_hint,
            client_version=client_version, model_updates=model_updates,
            model_update_interval_secs=model_update_interval_secs)

    def default_label(self) -> str:
        return f"Inference({self._kwargs['framework']})"

    def expand(self, pcoll: beam.PCollection) -> dict[str, beam.PCollection]:
        config = _config.parse(**self._kwargs)
        plan = _plan.build(config, pcoll.element_type, self._policy)
        failed: list[beam.PCollection] = []
        rows = pcoll
        if plan.key_field is not None:
            keyed = pcoll | "KeyByModel" >> beam.ParDo(_KeyRows(plan)).with_outputs(
                FAILURES, main="rows")
            rows = keyed.rows
            failed.append(keyed[FAILURES])
        # Rows go to RunInference as they are: the handler reads a whole batch's features at
        # once, and emits one Outcomes per batch.
        updates = _updates.side_input(pcoll, config, plan.signature, self._updates,
                                      self._policy)
        if updates is not None and config.model_updates is not None:
            rows = _updates.hold_until_window_end(rows)
        scored = rows | "RunInference" >> RunInference(
            plan.handler, inference_args=plan.inference_args, model_metadata_pcoll=updates)
        post = scored | "Postprocess" >> beam.ParDo(Postprocess(plan)).with_outputs(
            FAILURES, main=PREDICTIONS)
        predictions = post[PREDICTIONS]
        predictions.element_type = plan.prediction_type
        failed.append(post[FAILURES])
        failures = tuple(failed) | "Failures" >> beam.Flatten().with_output_types(Failure)
        return {PREDICTIONS: predictions, FAILURES: failures}
