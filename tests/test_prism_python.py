"""``Inference`` in Python pipelines on Beam's Prism runner: batch, and streaming from an
unbounded source whose windows come out while the job runs.

Prism runs the Python stages in this process (LOOPBACK), so the collectors see every output.
"""

from __future__ import annotations

import collections
import time

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.prism_runner import PrismRunner
from apache_beam.transforms.periodicsequence import PeriodicImpulse
from apache_beam.transforms.window import FixedWindows

from crossinfer import Inference
from crossinfer import _prism
from tests import models
from tests.conftest import collect, collected, failure_ids, feature_rows

pytestmark = [pytest.mark.prism, pytest.mark.timeout(600)]


def _options(**extra) -> PipelineOptions:
    # A Prism job server of this pipeline's own: Beam shares one per process, made with the
    # options of the first pipeline that needed one (the DirectRunner can hand a pipeline
    # to Prism without prism_location, and the shared server then downloads a binary).
    return PipelineOptions(flags=[], prism_location=str(_prism.locate()),
                           experiments=["disable_prism_server_singleton"], **extra)


def test_inference_on_prism(sklearn_model, onnx_pair):
    path, model = sklearn_model
    x, _ = models.dataset(n=300, seed=61)
    rows = feature_rows(x) + [beam.Row(id=1000, features=[1.0, 2.0]),
                              beam.Row(id=1001, features=None)]
    onnx_path, _ = onnx_pair
    with beam.Pipeline(runner=PrismRunner(), options=_options()) as p:
        source = p | beam.Create(rows)
        out = source | "sklearn" >> Inference(
            framework="sklearn", model_uri=str(path), feature_field="features",
            passthrough_fields=["id"])
        onnx = source | "onnx" >> Inference(
            framework="onnx", model_uri=str(onnx_path), feature_field="features",
            passthrough_fields=["id"])
        tokens = [collect(out["predictions"], "pp"), collect(out["failures"], "pf"),
                  collect(onnx["predictions"], "op"), collect(onnx["failures"], "of")]
    preds, fails, onnx_preds, onnx_fails = (collected(t) for t in tokens)
    proba = model.predict_proba(x)
    assert sorted(r.id for r in preds) == list(range(300))
    assert all(r.label == int(proba[r.id].argmax()) for r in preds)
    assert failure_ids(fails) == {1000, 1001} and len(fails) == 2
    assert sorted(r.id for r in onnx_preds) == list(range(300))
    assert failure_ids(onnx_fails) == {1000, 1001} and len(onnx_fails) == 2


@pytest.fixture(scope="module")
def onnx_pair(tmp_path_factory):
    import torch

    directory = tmp_path_factory.mktemp("prism_onnx")
    mlp = models.train_mlp(directory / "mlp.pt")
    models.export_onnx(mlp, directory / "mlp.onnx", torch.zeros(2, models.N_FEATURES))
    return directory / "mlp.onnx", mlp


class _Stamp(beam.DoFn):
    """(window start, id, seconds since the test started) as each output arrives."""

    def __init__(self, t0: float) -> None:
        self._t0 = t0

    def process(self, element, window=beam.DoFn.WindowParam):
        row_id = element.id if hasattr(element, "id") else failure_ids([element]).pop()
        yield float(window.start), row_id, time.time() - self._t0


def test_streaming_windows_come_out_while_the_source_runs(sklearn_model):
    """PeriodicImpulse emits a row every 0.1 s for 24 s into 3-s windows; every 7th row is bad.
    The first window's outputs arrive long before the source ends, and every row of every
    window comes out exactly once."""
    path, model = sklearn_model
    seconds, interval, width = 24.0, 0.1, 3
    x, _ = models.dataset(n=int(seconds / interval) + 50, seed=67)
    t0 = time.time()
    start = t0 + 10  # Prism's start and the model's load come first
    stop = start + seconds

    def to_row(ts):
        row_id = int(round((float(ts) - start) / interval))
        features = [float(v) for v in x[row_id]]
        return beam.Row(id=row_id, features=features[:-1] if row_id % 7 == 6 else features)

    with beam.Pipeline(runner=PrismRunner(), options=_options(streaming=True)) as p:
        rows = (p | PeriodicImpulse(start_timestamp=start, stop_timestamp=stop,
                                    fire_interval=interval)
                | beam.Map(to_row) | beam.WindowInto(FixedWindows(width)))
        out = rows | Inference(framework="sklearn", model_uri=str(path),
                               feature_field="features", passthrough_fields=["id"],
                               max_batch_duration_secs=0.5)
        inputs = collect(rows | "In" >> beam.ParDo(_Stamp(t0)), "in")
        preds = collect(out["predictions"] | "P" >> beam.ParDo(_Stamp(t0)), "sp")
        fails = collect(out["failures"] | "F" >> beam.ParDo(_Stamp(t0)), "sf")
    inputs, preds, fails = collected(inputs), collected(preds), collected(fails)

    first_window = min(w for w, _, _ in inputs)
    first_seen = min(t for w, _, t in preds + fails if w == first_window)
    assert first_seen < stop - t0 - 10, (first_seen, stop - t0)
    assert len({w for w, _, t in preds if t < stop - t0}) >= 3  # several windows while running

    def per_window(items):
        counts = collections.defaultdict(collections.Counter)
        for w, row_id, _ in items:
            counts[w][row_id] += 1
        return counts

    rows_in, got = per_window(inputs), per_window(preds + fails)
    assert len(rows_in) >= seconds / width
    for window, ids in rows_in.items():
        assert got[window] == ids, window  # each row of the window once, in its window
    assert set(got) == set(rows_in)
    bad = {row_id for _, row_id, _ in fails}
    assert bad and all(i % 7 == 6 for i in bad)
    assert all(i % 7 != 6 for _, i, _ in preds)
