"""Unbounded input: TestStream with max_batch_duration_secs on the DirectRunner."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream

from crossinfer import Inference
from tests import models
from tests.conftest import collect, collected, failure_ids, feature_rows


def test_streaming_rows_are_all_predicted_or_failed(sklearn_model):
    path, model = sklearn_model
    x, _ = models.dataset(n=45, seed=31)
    rows = [models.FeatureRow(r.id, r.features) for r in feature_rows(x)]
    bad = models.FeatureRow(1000, [1.0, 2.0])
    stream = TestStream(coder=beam.coders.RowCoder.from_type_hint(models.FeatureRow, None))
    for start in range(0, 45, 15):
        stream = stream.add_elements(rows[start:start + 15]).advance_processing_time(3)
        stream = stream.advance_watermark_to(start + 15)
    stream = stream.add_elements([bad]).advance_watermark_to_infinity()

    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(options=options) as p:
        out = (p | stream.with_output_types(models.FeatureRow)
               | Inference(framework="sklearn", model_uri=str(path), feature_field="features",
                           passthrough_fields=["id"], max_batch_duration_secs=1,
                           max_batch_size=10))
        pred = collect(out["predictions"], "spred")
        fail = collect(out["failures"], "sfail")
        # max_batch_duration_secs reaches Beam: its stateful batching (buffering rows across
        # bundles, flushed by a timer) replaces the bundle-based one.
        assert _stateful_batching(p), "max_batch_duration_secs did not reach Beam"
    preds, fails = collected(pred), collected(fail)
    assert sorted(p.id for p in preds) == list(range(45))
    assert failure_ids(fails) == {1000}
    proba = model.predict_proba(x)
    assert all(p.label == int(proba[p.id].argmax()) for p in preds)


def _stateful_batching(pipeline: beam.Pipeline) -> list[str]:
    """Labels of the pipeline's stateful batching steps (Beam's BatchElements with a
    max_batch_duration_secs)."""
    found: list[str] = []

    class Visitor(beam.pipeline.PipelineVisitor):
        def visit_transform(self, node):
            fn = getattr(node.transform, "fn", None)
            if type(fn).__name__ == "_StatefulBatchElementsDoFn":
                found.append(node.full_label)

    pipeline.visit(Visitor())
    return found


def test_without_max_batch_duration_batching_is_per_bundle(sklearn_model):
    path, _ = sklearn_model
    p = beam.Pipeline()
    _ = (p | beam.Create([models.FeatureRow(0, [0.0] * models.N_FEATURES)])
         | Inference(framework="sklearn", model_uri=str(path), feature_field="features"))
    assert _stateful_batching(p) == []
