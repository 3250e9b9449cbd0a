"""``crossinfer.Inference``: preprocess -> Beam RunInference -> postprocess, rows in and out."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence  # noqa: F401 - the signature's annotations
from typing import Any, Optional, Union  # noqa: F401 - the signature's annotations

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference

from crossinfer import _beam, _config, _plan, _policy, _updates
from crossinfer._arguments import ARGUMENTS
from crossinfer._emit import FAILURES, Postprocess, failure
from crossinfer._errors import InputError, describe
from crossinfer._schemas import Failure

PREDICTIONS = "predictions"


def _signature() -> inspect.Signature:
    """``Inference.__init__``'s signature, one parameter per row of the argument table."""
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for a in ARGUMENTS:
        kind = (inspect.Parameter.POSITIONAL_OR_KEYWORD if a.positional
                else inspect.Parameter.KEYWORD_ONLY)
        params.append(inspect.Parameter(a.name, kind, default=a.default,
                                        annotation=a.annotation()))
    return inspect.Signature(params, return_annotation="None")


_SIGNATURE = _signature()


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
    """Run a PyTorch, scikit-learn, ONNX, TensorFlow, XGBoost or custom model over schema'd
    rows.

    Every argument is a plain value, one row of the table in ``crossinfer._arguments`` (the
    signature is that table's: ``inspect.signature(Inference)``). Applying it
    checks them all, loads each model once and types both outputs; it returns
    ``{"predictions": ..., "failures": ...}``, and every input row lands in exactly one.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The signature is the argument table's (``__signature__`` below): bound here, so a
        # misspelt or doubled argument is Python's own TypeError.
        given = _SIGNATURE.bind(self, *args, **kwargs)
        given.apply_defaults()
        super().__init__()
        _beam.check_library()
        # What callables and model files this transform may use: a Python pipeline's own
        # (the default), or the expansion service's, which builds the request under it.
        self._policy = _policy.current()
        arguments = dict(list(given.arguments.items())[1:])
        # A PCollection of ModelMetadata is not a plain value: kept aside, checked in expand.
        updates = arguments.get("model_updates")
        self._updates = updates if isinstance(updates, beam.PCollection) else None
        if self._updates is not None:
            arguments["model_updates"] = None
        # Stored as given; checked in one place, expand(), like scikit-learn's fit().
        self._kwargs = arguments

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
            rows = _updates.hold_until_window_end(rows, updates)
        scored = rows | "RunInference" >> RunInference(
            plan.handler, inference_args=plan.inference_args, model_metadata_pcoll=updates)
        post = scored | "Postprocess" >> beam.ParDo(Postprocess(plan)).with_outputs(
            FAILURES, main=PREDICTIONS)
        predictions = post[PREDICTIONS]
        predictions.element_type = plan.prediction_type
        failed.append(post[FAILURES])
        failures = tuple(failed) | "Failures" >> beam.Flatten().with_output_types(Failure)
        return {PREDICTIONS: predictions, FAILURES: failures}


Inference.__init__.__signature__ = _SIGNATURE  # type: ignore[attr-defined]
Inference.__init__.__annotations__ = {
    **{a.name: a.annotation() for a in ARGUMENTS}, "return": "None"}
