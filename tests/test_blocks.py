"""blocks=True: each element holds many rows; predictions come out as blocks, failures per row."""

from __future__ import annotations

import json
import typing

import apache_beam as beam
import numpy as np
import pytest
import torch

from crossinfer import ConfigurationError, Inference
from tests import models
from tests.conftest import collect, collected, run

# Functional NamedTuples: with postponed annotations Beam would see strings.
Block = typing.NamedTuple("Block", [("id", typing.Sequence[int]),
                                    ("features", typing.Sequence[typing.Sequence[float]])])
FlatBlock = typing.NamedTuple("FlatBlock", [("id", typing.Sequence[int]),
                                            ("features", typing.Sequence[float])])


def _run_typed(elements: list, element_type: type, **kwargs) -> tuple[list, list]:
    """Like conftest.run, for elements Create cannot infer a schema from (numpy blocks)."""
    with beam.Pipeline() as p:
        out = (p | beam.Impulse()
               | beam.FlatMap(lambda _: elements).with_output_types(element_type)
               | Inference(**kwargs))
        pred = collect(out["predictions"], "pred")
        fail = collect(out["failures"], "fail")
    return collected(pred), collected(fail)


def _by_id(blocks: list) -> dict[int, tuple[int, float]]:
    out = {}
    for b in blocks:
        assert len(b.id) == len(b.label) == len(b.score)
        out.update({i: (label, score) for i, label, score in zip(b.id, b.label, b.score)})
    return out


def test_numpy_and_list_blocks_match_predict_proba(sklearn_model):
    path, model = sklearn_model
    x, _ = models.dataset(n=250, seed=21)
    elements = [Block(np.arange(0, 100), x[:100]),  # a 2-D numpy array
                Block(list(range(100, 250)), x[100:].tolist())]  # lists of lists
    preds, fails = _run_typed(elements, Block, framework="sklearn", model_uri=str(path),
                              feature_field="features", passthrough_fields=["id"], blocks=True)
    assert fails == [] and len(preds) == 2  # one prediction block per input block
    got = _by_id(preds)
    proba = model.predict_proba(x)
    assert sorted(got) == list(range(250))
    for i, (label, score) in got.items():
        assert label == int(model.classes_[proba[i].argmax()])
        assert score == pytest.approx(proba[i].max(), rel=1e-5)
    assert {p.model_id for p in preds} == {str(path)}
    assert all(isinstance(v, int) for p in preds for v in p.id)


def test_flat_block_equals_row_mode(mlp_model):
    path, _ = mlp_model
    x, _ = models.dataset(n=64, seed=22)
    kw = dict(framework="pytorch", model_uri=str(path), model_class="tests.models:MLP",
              feature_field="features", passthrough_fields=["id"])
    flat = FlatBlock(list(range(64)), x.ravel().tolist())  # row after row, 64 * 8 numbers
    preds, fails = _run_typed([flat], FlatBlock, blocks=True, **kw)
    rows, _ = run([beam.Row(id=i, features=[float(v) for v in r]) for i, r in enumerate(x)], **kw)
    assert not fails
    got = _by_id(preds)
    for p in rows:
        assert got[p.id][0] == p.label
        assert got[p.id][1] == pytest.approx(p.score, rel=1e-6)


def test_bad_rows_fail_alone_with_row_mode_messages(mlp_model):
    path, _ = mlp_model
    x, _ = models.dataset(n=10, seed=23)
    features = x.tolist()
    features[2] = features[2][:5]  # too short
    features[4] = None  # missing
    features[6] = [1.0, "two"] + features[6][2:]  # not a number
    features[8] = [float("nan")] * models.N_FEATURES  # a NaN output: fails in postprocess
    block = beam.Row(id=list(range(10)), features=features)
    preds, fails = _run_typed([block], Block, framework="pytorch", model_uri=str(path),
                              model_class="tests.models:MLP", feature_field="features",
                              passthrough_fields=["id"], blocks=True)
    assert sorted(_by_id(preds)) == [0, 1, 3, 5, 7, 9]
    by_id = {json.loads(f.element)["id"]: f for f in fails}
    assert sorted(by_id) == [2, 4, 6, 8]
    assert "has 5 values but the model takes exactly 8" in by_id[2].error
    assert by_id[4].stage == by_id[6].stage == "preprocess"
    assert by_id[8].stage == "postprocess" and "not finite" in by_id[8].error


def test_malformed_blocks_are_one_failure_each(sklearn_model):
    path, model = sklearn_model
    x, _ = models.dataset(n=6, seed=24)
    elements = [
        FlatBlock([0, 1], x[:3].ravel().tolist()),  # 2 ids, 3 rows of features
        FlatBlock([3, 4], x[3:5].ravel().tolist()[:-1]),  # not a whole number of rows
        FlatBlock([5], x[5].tolist()),  # fine
    ]
    preds, fails = _run_typed(elements, FlatBlock, framework="sklearn", model_uri=str(path),
                              feature_field="features", passthrough_fields=["id"], blocks=True)
    assert sorted(_by_id(preds)) == [5]
    assert len(fails) == 2 and {f.stage for f in fails} == {"preprocess"}
    errors = " | ".join(f.error for f in fails)
    assert "disagree on its number of rows" in errors
    assert "not a whole number of rows of 8" in errors
    assert sorted(json.loads(f.element)["id"] for f in fails) == [[0, 1], [3, 4]]


def test_feature_fields_hold_columns(tmp_path):
    from sklearn.linear_model import LinearRegression
    import pickle

    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 3))
    model = LinearRegression().fit(x, x @ np.array([1.0, -2.0, 0.5]))
    path = tmp_path / "linreg.pkl"
    path.write_bytes(pickle.dumps(model))
    block = beam.Row(id=list(range(40)), a=x[:, 0].tolist(), b=x[:, 1].tolist(),
                     c=x[:, 2].tolist())
    preds, fails = run([block], framework="sklearn", model_uri=str(path),
                       feature_fields=["a", "b", "c"], postprocess="regression",
                       passthrough_fields=["id"], blocks=True)
    assert not fails and len(preds) == 1
    want = model.predict(x.astype(np.float32))
    np.testing.assert_allclose(preds[0].value, want, rtol=1e-5)


def test_variable_length_blocks_are_padded_per_bucket(sequence_model):
    path, model = sequence_model
    seqs = models.token_sequences(n=80, seed=25)
    block = beam.Row(id=list(range(80)), tokens=[s.tolist() for s in seqs])
    preds, fails = run(on_built=models.RecordingMeanEmbedding.shapes.clear,
                       rows=[block], framework="pytorch", model_uri=str(path),
                       model_class="tests.models:RecordingMeanEmbedding", feature_field="tokens",
                       passthrough_fields=["id"], postprocess="raw", blocks=True,
                       max_batch_size=16)
    assert not fails and len(preds) == 1
    shapes = models.RecordingMeanEmbedding.shapes
    assert sum(n for n, _ in shapes) == 80 and max(n for n, _ in shapes) <= 16
    with torch.no_grad():
        for i, out in zip(preds[0].id, preds[0].output):
            alone = model(torch.from_numpy(seqs[i]).unsqueeze(0))[0].numpy()
            np.testing.assert_allclose(out, alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("change, words", [
    (dict(preprocess="tests.models:scaled_features", feature_field=None), "preprocess"),
    (dict(postprocess="tests.models:label_name", output_schema={"name": "string"}),
     "custom postprocess"),
    (dict(min_batch_size=10), "min_batch_size"),
    (dict(max_batch_duration_secs=1.0), "max_batch_duration_secs"),
    (dict(blocks="yes"), "blocks must be true or false"),
    (dict(passthrough_fields=["name"]), "'name' is a scalar field"),
])
def test_blocks_configuration_errors(sklearn_model, change, words):
    kwargs = dict(framework="sklearn", model_uri=str(sklearn_model[0]),
                  feature_field="features", blocks=True)
    kwargs.update(change)
    p = beam.Pipeline()
    rows = p | beam.Create([beam.Row(id=[1], features=[[0.0] * 8], name="x")])
    with pytest.raises(ConfigurationError, match=words):
        _ = rows | Inference(**kwargs)


# What the Java library sends: the feature column packed little-endian, with its row lengths.
Packed = typing.NamedTuple("Packed", [("values", bytes), ("lengths", bytes), ("dtype", str)])
PackedBlock = typing.NamedTuple("PackedBlock", [("id", typing.Sequence[int]),
                                                ("features", Packed)])


def _pack(rows: list, dtype: str = "float64") -> Packed:
    wire = {"float64": "<f8", "float32": "<f4", "int64": "<i8", "int32": "<i4"}[dtype]
    values = np.concatenate([np.asarray(r, dtype=wire) for r in rows if r is not None]
                            or [np.zeros(0, wire)])
    lengths = np.asarray([-1 if r is None else len(r) for r in rows], dtype="<i4")
    return Packed(values.tobytes(), lengths.tobytes(), dtype)


def test_packed_blocks_equal_row_mode_and_bad_rows_fail_alone(mlp_model):
    path, _ = mlp_model
    x, _ = models.dataset(n=12, seed=26)
    kw = dict(framework="pytorch", model_uri=str(path), model_class="tests.models:MLP",
              feature_field="features", passthrough_fields=["id"])
    features = x.tolist()
    features[3] = features[3][:5]  # too short: fails alone, with the row-mode message
    features[7] = None  # a null row
    blocks = [PackedBlock(list(range(12)), _pack(features)),
              PackedBlock([12, 13], _pack(x[:2].tolist(), "float32"))]
    preds, fails = _run_typed(blocks, PackedBlock, blocks=True, **kw)
    good = [i for i in range(12) if i not in (3, 7)]
    rows, row_fails = run([beam.Row(id=i, features=features[i]) for i in range(12)], **kw)
    got = _by_id(preds)
    assert sorted(got) == good + [12, 13]
    for p in rows:
        assert got[p.id] == (p.label, pytest.approx(p.score, rel=1e-6))
    f32 = x[:2].astype(np.float32).astype(np.float64)  # float32 values, read as the row path
    f32_rows, _ = run([beam.Row(id=12 + i, features=f32[i].tolist()) for i in range(2)], **kw)
    for p in f32_rows:
        assert got[p.id] == (p.label, pytest.approx(p.score, rel=1e-6))
    by_id = {json.loads(f.element)["id"]: f for f in fails}
    want = {json.loads(f.element)["id"]: f for f in row_fails}
    assert sorted(by_id) == sorted(want) == [3, 7]
    for i in (3, 7):
        assert (by_id[i].stage, by_id[i].error) == (want[i].stage, want[i].error)
    assert json.loads(by_id[3].element)["features"] == features[3]


def test_packed_variable_length_token_ids(sequence_model):
    path, model = sequence_model
    seqs = models.token_sequences(n=40, seed=27)
    block = PackedBlock(list(range(40)), _pack([s.tolist() for s in seqs], "int32"))
    preds, fails = _run_typed([block], PackedBlock, framework="pytorch", model_uri=str(path),
                              model_class="tests.models:RecordingMeanEmbedding",
                              feature_field="features", passthrough_fields=["id"],
                              postprocess="raw", blocks=True)
    assert not fails and len(preds) == 1
    with torch.no_grad():
        for i, out in zip(preds[0].id, preds[0].output):
            alone = model(torch.from_numpy(seqs[i]).unsqueeze(0))[0].numpy()
            np.testing.assert_allclose(out, alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("packed, words", [
    (Packed(b"\0" * 12, np.asarray([1], "<i4").tobytes(), "float64"), "not whole float64"),
    (Packed(b"\0" * 16, np.asarray([1], "<i4").tobytes(), "float64"), "do not add up"),
    (Packed(b"\0" * 16, np.asarray([2], "<i4").tobytes(), "complex128"), "packed as"),
])
def test_malformed_packed_blocks_are_one_failure(sklearn_model, packed, words):
    preds, fails = _run_typed([PackedBlock([0], packed)], PackedBlock, framework="sklearn",
                              model_uri=str(sklearn_model[0]), feature_field="features",
                              passthrough_fields=["id"], blocks=True)
    assert not preds and len(fails) == 1
    assert fails[0].stage == "preprocess" and words in fails[0].error, fails[0].error
