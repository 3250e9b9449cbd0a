"""TensorFlow end to end: Keras files and SavedModel directories, the signature read off the
model (input spec, final softmax), outputs equal to calling the model directly, a padded
sequence axis, per-row failures, sharing, and the model repository treating both as code."""

from __future__ import annotations

import json
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest

from crossinfer._errors import ModelLoadError
from tests import models
from crossinfer import Inference
from tests.conftest import collect, collected, failure_ids, feature_rows, run
from tests.test_java_e2e import job_server  # noqa: F401 - the fixture

# Run by scripts/test.sh in a pytest process of its own: TensorFlow and torch's compiler
# cannot share one process (both register LLVM's options; training a torch model aborts).
pytestmark = pytest.mark.tensorflow

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")


def train_classifier(path: Path, seed: int = 0) -> "keras.Model":
    """A tiny softmax classifier on the shared dataset, saved as a .keras file."""
    keras.utils.set_random_seed(seed)
    x, y = models.dataset(n=300, seed=seed)
    model = keras.Sequential([keras.Input((models.N_FEATURES,)),
                              keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=3, batch_size=64, verbose=0)
    model.save(str(path))
    return model


def sequence_model(path: Path) -> "keras.Model":
    """Token ids of any length -> 2 scores; id 0 is masked, so padding changes nothing."""
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((None,), dtype="int64"),
                              keras.layers.Embedding(models.VOCAB, 8, mask_zero=True),
                              keras.layers.GlobalAveragePooling1D(),
                              keras.layers.Dense(2)])
    model.save(str(path))
    return model


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> tuple[Path, "keras.Model"]:
    path = tmp_path_factory.mktemp("tf") / "clf.keras"
    return path, train_classifier(path)


def test_keras_file_matches_the_model(classifier):
    path, model = classifier
    x, _ = models.dataset(n=90, seed=5)
    rows = feature_rows(x) + [beam.Row(id=500, features=[1.0] * 3)]
    preds, fails = run(rows, framework="tensorflow", model_uri=str(path),
                       feature_field="features", passthrough_fields=["id"], max_batch_size=32)
    want = model.predict_on_batch(x)
    assert len(preds) == 90 and failure_ids(fails) == {500}
    assert "takes exactly 8 (the Keras model's input has shape [None, 8])" in fails[0].error
    for p in preds:
        assert p.label == int(want[p.id].argmax())
        assert p.score == pytest.approx(float(want[p.id].max()), rel=1e-5)
        assert p.model_id == str(path)


def test_saved_model_directory(classifier, tmp_path):
    _, model = classifier
    model.export(str(tmp_path / "sm"))  # a SavedModel with a serving_default signature
    x, _ = models.dataset(n=40, seed=6)
    preds, fails = run(feature_rows(x), framework="tensorflow", model_uri=str(tmp_path / "sm"),
                       feature_field="features", passthrough_fields=["id"], postprocess="raw")
    want = model.predict_on_batch(x)
    assert fails == [] and len(preds) == 40
    for p in preds:
        np.testing.assert_allclose(p.output, want[p.id], rtol=1e-5, atol=1e-6)


def test_sequence_axis_is_padded(tmp_path):
    model = sequence_model(tmp_path / "seq.keras")
    seqs = models.token_sequences(n=60, seed=3)
    rows = [beam.Row(id=i, tokens=[int(t) for t in s]) for i, s in enumerate(seqs)]
    preds, fails = run(rows, framework="tensorflow", model_uri=str(tmp_path / "seq.keras"),
                       feature_field="tokens", passthrough_fields=["id"], postprocess="raw",
                       min_batch_size=30, max_batch_size=30)
    assert fails == [] and len(preds) == 60
    for p in preds:
        alone = model.predict_on_batch(seqs[p.id][None, :])[0]
        np.testing.assert_allclose(p.output, alone, rtol=1e-5, atol=1e-6)


def test_shared_model_in_process(classifier):
    path, model = classifier
    x, _ = models.dataset(n=30, seed=8)
    preds, fails = run(feature_rows(x), framework="tensorflow", model_uri=str(path),
                       feature_field="features", passthrough_fields=["id"], postprocess="raw",
                       large_model=True)
    want = model.predict_on_batch(x)
    assert fails == [] and len(preds) == 30
    for p in preds:
        np.testing.assert_allclose(p.output, want[p.id], rtol=1e-5, atol=1e-6)


def test_repository_treats_keras_files_as_code(classifier, tmp_path):
    from crossinfer import _inspect, _repository
    from crossinfer._config import parse
    from crossinfer._policy import Policy

    data, trusted = tmp_path / "data", tmp_path / "trusted"
    data.mkdir()
    trusted.mkdir()
    (data / "m.keras").write_bytes(classifier[0].read_bytes())
    (trusted / "m.keras").write_bytes(classifier[0].read_bytes())
    policy = Policy(repository=_repository.Repository([str(data)], [str(trusted)]))
    with pytest.raises(ModelLoadError, match="a SavedModel or Keras file, a format that "
                                             "runs code"):
        _inspect.admit(parse(framework="tensorflow", model_uri=str(data / "m.keras"),
                             feature_field="features"), policy)
    config = parse(framework="tensorflow", model_uri=str(trusted / "m.keras"),
                   feature_field="features")
    assert _inspect.admit(config, policy) == {None: str((trusted / "m.keras").resolve())}


def test_bad_file_fails_at_construction(tmp_path):
    (tmp_path / "junk.keras").write_bytes(b"not a zip")
    with pytest.raises(ModelLoadError, match="did not load as a tensorflow model"):
        run(feature_rows(np.zeros((1, models.N_FEATURES), np.float32)), framework="tensorflow",
            model_uri=str(tmp_path / "junk.keras"), feature_field="features")


@pytest.mark.java
@pytest.mark.parametrize("form", ["keras", "saved_model"])
def test_from_java(job_server, classifier, tmp_path, form):
    """CrossInference.tensorflow(uri) from a Java pipeline; the Keras file, or a SavedModel
    directory, in a trusted root of the service CrossInference starts."""
    from tests._java_frameworks import java_rows

    path, model = classifier
    data, trusted = tmp_path / "data", tmp_path / "trusted"
    data.mkdir()
    trusted.mkdir()
    if form == "keras":
        served = trusted / "m.keras"
        served.write_bytes(path.read_bytes())
    else:
        served = trusted / "sm"
        model.export(str(served))
    x, _ = models.dataset(n=50, seed=12)
    preds, fails = java_rows(job_server, tmp_path, "tensorflow", served, x, data, trusted)
    want = model.predict_on_batch(x)
    assert sorted(p["id"] for p in preds) == list(range(50))
    for p in preds:
        assert p["label"] == int(want[p["id"]].argmax())
        assert p["score"] == pytest.approx(float(want[p["id"]].max()), rel=1e-5)
    assert [json.loads(f["element"])["id"] for f in fails] == [900]
    assert "takes exactly 8" in fails[0]["error"]


def test_keras_lambda_is_refused_by_safe_mode_and_the_advice_works(tmp_path):
    """A Keras file holding Python bytecode (a Lambda layer) does not load, even from a
    trusted root: Keras's safe_mode is on. The message's advice (load_model_args) loads it."""
    model = keras.Sequential([keras.Input((models.N_FEATURES,)),
                              keras.layers.Lambda(lambda t: t * 2), keras.layers.Dense(2)])
    model.save(str(tmp_path / "lambda.keras"))
    rows = feature_rows(models.dataset(n=10, seed=3)[0])
    kw = dict(framework="tensorflow", model_uri=str(tmp_path / "lambda.keras"),
              feature_field="features", passthrough_fields=["id"], postprocess="raw")
    with pytest.raises(ModelLoadError, match="did not load as a tensorflow model.*Lambda.*"
                                             "load_model_args=.'safe_mode': False"):
        run(rows, **kw)
    preds, fails = run(rows, load_model_args={"safe_mode": False}, **kw)
    want = model.predict_on_batch(models.dataset(n=10, seed=3)[0])
    assert fails == [] and len(preds) == 10
    for p in preds:
        np.testing.assert_allclose(p.output, want[p.id], rtol=1e-5, atol=1e-6)


def test_saved_model_directory_from_a_model_root(classifier, tmp_path):
    """A SavedModel directory is served from a model root (copied privately through
    descriptors); a directory holding a link out of the root is refused."""
    from crossinfer import _policy, _repository

    _, model = classifier
    root, outside = tmp_path / "trusted", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    model.export(str(root / "sm"))
    model.export(str(outside / "sm"))
    policy = _policy.Policy(repository=_repository.Repository(trusted_roots=[str(root)]))
    x, _ = models.dataset(n=20, seed=8)
    kw = dict(framework="tensorflow", feature_field="features", passthrough_fields=["id"],
              postprocess="raw")
    with beam.Pipeline() as p:
        with _policy.applied(policy):
            out = p | beam.Create(feature_rows(x)) | Inference(model_uri=str(root / "sm"), **kw)
        token = collect(out["predictions"], "sm")
    preds = collected(token)
    want = model.predict_on_batch(x)
    assert len(preds) == 20
    for pred in preds:
        np.testing.assert_allclose(pred.output, want[pred.id], rtol=1e-5, atol=1e-6)
    (root / "sm" / "variables").rename(root / "sm" / "old-variables")
    (root / "sm" / "variables").symlink_to(outside / "sm" / "variables")
    with pytest.raises(ModelLoadError, match="symbolic link"):
        with _policy.applied(policy):
            beam.Pipeline() | beam.Create(feature_rows(x)) | Inference(
                model_uri=str(root / "sm"), **kw)


def test_multi_output_keras_model_named(tmp_path):
    """Several outputs: output='named' gives them all, by name, to a custom postprocess;
    without output_index or output='named' the build says which to give."""
    keras.utils.set_random_seed(2)
    inputs = keras.Input((models.N_FEATURES,))
    model = keras.Model(inputs, {"logits": keras.layers.Dense(3, name="logits")(inputs),
                                 "embedding": keras.layers.Dense(2, name="embedding")(inputs)})
    model.save(str(tmp_path / "multi.keras"))
    x, _ = models.dataset(n=20, seed=9)
    kw = dict(framework="tensorflow", model_uri=str(tmp_path / "multi.keras"),
              feature_field="features", passthrough_fields=["id"])
    with pytest.raises(Exception, match="has 2 outputs.*output_index=0.*output='named'"):
        run(feature_rows(x), postprocess="raw", **kw)
    preds, fails = run(feature_rows(x), output="named", postprocess="tests.models:named_fields",
                       output_schema={"top": "int64", "first": "float64"}, **kw)
    want = model.predict_on_batch(x)
    assert fails == [] and len(preds) == 20
    for p in preds:
        assert p.top == int(np.asarray(want["logits"][p.id]).argmax())
        assert p.first == pytest.approx(float(want["embedding"][p.id][0]), rel=1e-5)
