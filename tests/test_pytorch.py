"""PyTorch end to end: state_dict and TorchScript, fixed-width and variable-length inputs."""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pytest
import torch

from tests import models
from tests.conftest import failure_ids, feature_rows, run


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_state_dict_matches_the_module(mlp_model):
    path, model = mlp_model
    x, _ = models.dataset(n=200, seed=5)
    preds, fails = run(feature_rows(x), framework="pytorch", model_uri=str(path),
                       model_class="tests.models:MLP", model_params={"hidden": 16},
                       feature_field="features", passthrough_fields=["id"])
    assert fails == [] and len(preds) == 200
    with torch.no_grad():
        proba = _softmax(model(torch.from_numpy(x)).numpy())
    for p in preds:
        assert p.label == int(proba[p.id].argmax())
        assert p.score == pytest.approx(float(proba[p.id].max()), rel=1e-4)


def test_torchscript_without_model_class(mlp_model, tmp_path):
    _, model = mlp_model
    path = tmp_path / "mlp.torchscript"
    models.export_torchscript(model, path)
    x, _ = models.dataset(n=50, seed=6)
    preds, fails = run(feature_rows(x), framework="pytorch", model_uri=str(path),
                       feature_field="features", passthrough_fields=["id"], postprocess="raw")
    assert not fails
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    for p in preds:
        np.testing.assert_allclose(p.output, logits[p.id], rtol=1e-5, atol=1e-6)


def test_variable_length_sequences_equal_unpadded_predictions(sequence_model):
    path, model = sequence_model
    seqs = models.token_sequences(n=150, seed=2)
    rows = [beam.Row(id=i, tokens=[int(t) for t in s]) for i, s in enumerate(seqs)]
    preds, fails = run(on_built=models.RecordingMeanEmbedding.shapes.clear,
                       rows=rows, framework="pytorch", model_uri=str(path),
                       model_class="tests.models:RecordingMeanEmbedding", feature_field="tokens",
                       passthrough_fields=["id"], postprocess="raw",
                       min_batch_size=64, max_batch_size=64)
    assert fails == [] and len(preds) == 150
    with torch.no_grad():
        for p in preds:
            alone = model(torch.from_numpy(seqs[p.id]).unsqueeze(0))[0].numpy()
            np.testing.assert_allclose(p.output, alone, rtol=1e-5, atol=1e-6)
    # Batched, not one row per call: rows of different lengths were padded together.
    shapes = models.RecordingMeanEmbedding.shapes
    assert sum(n for n, _ in shapes) == 150
    assert max(n for n, _ in shapes) > 8


def test_fixed_width_rows_are_never_padded(mlp_model):
    path, _ = mlp_model
    x, _ = models.dataset(n=30, seed=8)
    rows = feature_rows(x) + [
        beam.Row(id=100, features=[0.5] * (models.N_FEATURES - 2)),
        beam.Row(id=101, features=[0.5] * (models.N_FEATURES + 1)),
        beam.Row(id=102, features=[float("nan")] * models.N_FEATURES),
        beam.Row(id=103, features=None),
    ]
    preds, fails = run(rows, framework="pytorch", model_uri=str(path),
                       model_class="tests.models:MLP", feature_field="features",
                       passthrough_fields=["id"], min_batch_size=len(rows),
                       max_batch_size=len(rows))
    assert sorted(p.id for p in preds) == list(range(30))
    assert failure_ids(fails) == {100, 101, 102, 103}
    errors = {f.stage + ": " + f.error for f in fails}
    assert any("has 6 values but the model takes exactly 8" in e for e in errors)
    assert any(e.startswith("postprocess") and "not finite" in e for e in errors)


def test_one_model_thread_per_call_and_the_callers_process_left_alone(mlp_model, monkeypatch):
    # In-process (the DirectRunner here) the caller's torch threads and GC stay as they were;
    # the model call itself runs with one thread.
    import gc

    path, _ = mlp_model
    monkeypatch.delenv("CROSSINFER_MODEL_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    frozen = gc.get_freeze_count()
    models.ThreadRecordingMLP.threads.clear()
    try:
        x, _ = models.dataset(n=10, seed=9)
        preds, _ = run(feature_rows(x), framework="pytorch", model_uri=str(path),
                       model_class="tests.models:ThreadRecordingMLP", feature_field="features",
                       on_built=models.ThreadRecordingMLP.threads.clear)
        assert len(preds) == 10
        assert models.ThreadRecordingMLP.threads and set(models.ThreadRecordingMLP.threads) == {1}
        assert torch.get_num_threads() == 2
        assert gc.get_freeze_count() == frozen
    finally:
        torch.set_num_threads(before)


def test_in_process_full_collections_skip_older_objects_for_a_bundle_only(mlp_model):
    # In the caller's process the GC is frozen while a bundle runs (full collections would
    # walk every object of Beam and torch for each batch of rows) and unfrozen after it; an
    # object the caller froze stays frozen, and then crossinfer leaves the GC alone.
    import gc

    path, _ = mlp_model
    x, _ = models.dataset(n=10, seed=10)
    kw = dict(framework="pytorch", model_uri=str(path), model_class="tests.models:MLP",
              preprocess="tests.models:freeze_recording_features")
    gc.unfreeze()
    models.FREEZE_COUNTS.clear()
    preds, _ = run(feature_rows(x), **kw, on_built=models.FREEZE_COUNTS.clear)
    assert len(preds) == 10 and len(models.FREEZE_COUNTS) == 10
    assert min(models.FREEZE_COUNTS) > 1000  # Beam, torch, the model: frozen for the bundle
    assert gc.get_freeze_count() == 0  # and given back
    gc.freeze()  # the caller froze its own objects: crossinfer does not touch the GC
    try:
        theirs = gc.get_freeze_count()
        models.FREEZE_COUNTS.clear()
        preds, _ = run(feature_rows(x), **kw, on_built=models.FREEZE_COUNTS.clear)
        # Frozen objects freed by reference counting leave the count; none are added.
        assert len(preds) == 10 and max(models.FREEZE_COUNTS) <= theirs
        assert 0.9 * theirs < gc.get_freeze_count() <= theirs  # still the caller's, frozen
    finally:
        gc.unfreeze()


def test_a_worker_process_keeps_its_thread_cap(mlp_model, monkeypatch):
    # In a worker (another process than the one that built the pipeline) the cap holds for
    # the process's life, even after the context that set it is no longer referenced.
    import gc

    from crossinfer import _handler
    from crossinfer.frameworks import _pytorch
    from crossinfer._config import parse
    from crossinfer._policy import DEFAULT
    from crossinfer._features import Extractor

    path = str(mlp_model[0])
    config = parse(framework="pytorch", model_uri=path, model_class="tests.models:MLP",
                   feature_field="features")
    fw = _pytorch.build(config, path, _pytorch.describe(config, path, DEFAULT), DEFAULT)
    handler = _handler.RowHandler(fw, Extractor(feature_field="features"), {})
    handler._owner_pid = -1  # as when unpickled in a worker process
    monkeypatch.setenv("CROSSINFER_GC_FREEZE", "0")
    monkeypatch.delenv("CROSSINFER_MODEL_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        handler.load_model()
        gc.collect()
        assert torch.get_num_threads() == 1
    finally:
        _handler._HELD_LIMITS.clear()
        torch.set_num_threads(before)
