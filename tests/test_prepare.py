"""crossinfer.Prepare: Beam's MLTransform with plain values, against MLTransform itself.

tf.Transform imports TensorFlow, so these tests run in the TensorFlow pytest process
(``-m tensorflow``; see conftest.pytest_ignore_collect).
"""

from __future__ import annotations

import json
import pickle
import typing
from pathlib import Path
from typing import Any, Optional

import apache_beam as beam
import numpy as np
import pytest

from crossinfer import ConfigurationError, Inference, Prepare
from tests.conftest import collect, collected
from tests.test_java_e2e import prism  # noqa: F401 - the fixture

pytest.importorskip("tensorflow_transform", reason="needs the prepare extra (tf.Transform)")

pytestmark = pytest.mark.tensorflow

COLORS = ["red", "green", "blue", "amber"]


class Item(typing.NamedTuple):
    id: int
    x: float
    y: float
    color: str
    words: typing.List[str]
    text: str


def _items(n: int, seed: int) -> list[Item]:
    rng = np.random.default_rng(seed)
    vocab = ["alpha", "beta", "gamma", "delta", "beta"]
    return [Item(i, float(rng.uniform(-5, 5)), float(rng.normal(2, 3)), COLORS[i % 4],
                 [vocab[j] for j in rng.integers(0, 5, size=1 + i % 3)],
                 " ".join(vocab[j] for j in rng.integers(0, 5, size=2)))
            for i in range(n)]


# Every MLTransform operation that needs no download, most with arguments.
OPERATIONS = [
    {"operation": "ScaleTo01", "columns": ["x"]},
    {"operation": "ScaleToZScore", "columns": ["y"]},
    {"operation": "ComputeAndApplyVocabulary", "columns": ["color"], "num_oov_buckets": 1},
    {"operation": "ComputeAndApplyVocabulary", "columns": ["words"]},
    {"operation": "TFIDF", "columns": ["words"], "smooth": True},
    {"operation": "NGrams", "columns": ["text"], "split_string_by_delimiter": " ",
     "ngram_range": [1, 2], "ngrams_separator": "_"},
    {"operation": "DeduplicateTensorPerRow", "columns": ["text"]},
]
NUMERIC = [  # on copies of x, so each sees raw values
    {"operation": "ScaleByMinMax", "columns": ["x_minmax"], "min_value": -1, "max_value": 1},
    {"operation": "Bucketize", "columns": ["x_quantile"], "num_buckets": 3},
    {"operation": "ApplyBuckets", "columns": ["x_bucket"], "bucket_boundaries": [-2, 0, 2]},
    {"operation": "ApplyBucketsWithInterpolation", "columns": ["x_interp"],
     "bucket_boundaries": [-2, 0, 2]},
    {"operation": "HashStrings", "columns": ["color_hash"], "hash_buckets": 7},
    # Its analysis varies from run to run in MLTransform itself: compared in read mode only.
    {"operation": "ScaleToGaussian", "columns": ["y_gauss"]},
    {"operation": "BagOfWords", "columns": ["text_bag"], "split_string_by_delimiter": " "},
]


class Wide(typing.NamedTuple):
    id: int
    x: float
    y: float
    color: str
    words: typing.List[str]
    text: str
    x_minmax: float
    x_quantile: float
    x_bucket: float
    x_interp: float
    color_hash: str
    text_bag: str
    y_gauss: float


def _wide(items: list[Item]) -> list[Wide]:
    return [Wide(*i, i.x, i.x, i.x, i.x, i.color, i.text, i.y) for i in items]


def _direct(rows: list[Any], ops: list[dict], location: str, write: bool) -> dict[int, dict]:
    """MLTransform called directly on dicts (Beam's documented input), keyed by id."""
    from apache_beam.ml.transforms import tft
    from apache_beam.ml.transforms.base import MLTransform

    def as_dict(r):
        return {k: (v if isinstance(v, (str, list)) else float(v)) if k != "id" else v
                for k, v in r._asdict().items()}

    with beam.Pipeline() as p:
        dicts = p | beam.Create([as_dict(r) for r in rows])
        if write:
            built = [getattr(tft, o["operation"])(**{
                k: tuple(v) if k in ("ngram_range",) else v
                for k, v in o.items() if k != "operation"}) for o in ops]
            out = dicts | MLTransform(write_artifact_location=location, transforms=built)
        else:
            out = dicts | MLTransform(read_artifact_location=location)
        token = collect(out | beam.Map(lambda r: r.as_dict()), "direct")
    return {r["id"]: r for r in collected(token)}


def _ours(rows: list[Any], **kwargs: Any) -> tuple[list[Any], list[Any], Any]:
    with beam.Pipeline() as p:
        result = p | beam.Create(rows) | Prepare(passthrough_fields=["id"], **kwargs)
        element_type = result["prepared"].element_type
        good, bad = collect(result["prepared"], "prepared"), collect(result["failures"], "fails")
    return collected(good), collected(bad), element_type


def _same(ours: list[Any], direct: dict[int, dict], scalars: set[str],
          skip: tuple[str, ...] = ()) -> None:
    assert sorted(r.id for r in ours) == sorted(direct)
    for row in ours:
        expected = direct[row.id]
        assert set(expected) == set(row.as_dict())
        for name, want in expected.items():
            if name == "id" or name in skip:  # id: the passthrough field, the keys
                continue
            got = getattr(row, name)
            want = [w.decode() if isinstance(w, bytes) else w for w in np.asarray(want).tolist()]
            if name in scalars:
                assert isinstance(got, (int, float)) and [got] == want, (name, got, want)
            else:
                assert got == want, (name, got, want)


SCALARS = {"x", "y", "color", "x_minmax", "x_quantile", "x_bucket", "x_interp", "color_hash",
           "y_gauss"}


def test_write_and_read_modes_equal_mltransform(tmp_path: Path) -> None:
    """Every operation, both modes: the same values as MLTransform on the same rows, typed,
    with the passthrough field MLTransform's own output type leaves out."""
    train, later = _wide(_items(40, seed=1)), _wide(_items(12, seed=2))
    ops = OPERATIONS + NUMERIC
    ours, fails, element_type = _ours(train, operations=ops,
                                      write_artifact_location=str(tmp_path / "ours"))
    assert fails == []
    direct = _direct(train, ops, str(tmp_path / "direct"), write=True)
    _same(ours, direct, SCALARS, skip=("y_gauss",))
    fields = dict(element_type._fields)
    assert fields["id"] is int and fields["x"] is float and fields["color"] is int
    assert typing.get_args(fields["words_tfidf_weight"]) == (float,)
    assert typing.get_args(fields["text"]) == (str,)
    # Read mode: our saved artifacts (MLTransform's own, plus our manifest) applied to new
    # rows, against MLTransform's read mode on the same artifacts.
    ours, fails, _ = _ours(later, read_artifact_location=str(tmp_path / "ours"))
    assert fails == []
    _same(ours, _direct(later, [], str(tmp_path / "ours"), write=False), SCALARS)


class Sale(typing.NamedTuple):
    id: int
    x: Optional[float]
    color: str


def test_prepare_then_inference_with_passthrough_and_no_map(tmp_path: Path) -> None:
    """Write mode with bad rows among good ones, then read-mode Prepare feeding Inference
    directly: typed scalar columns as feature_fields and the passthrough id, predictions equal
    to the model on MLTransform's own output."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    train = [Sale(i, float(rng.uniform(0, 10)), COLORS[i % 4]) for i in range(40)]
    ops = [{"operation": "ScaleTo01", "columns": ["x"]},
           {"operation": "ComputeAndApplyVocabulary", "columns": ["color"]}]
    # Rows tf.Transform cannot take are failures; the others are prepared as without them.
    bad = [Sale(100, float("nan"), "red"), Sale(101, None, "red"), Sale(102, float("inf"), "x")]
    prepared, fails, _ = _ours(train + bad, operations=ops,
                               write_artifact_location=str(tmp_path / "a"))
    by_id = {json.loads(f.element)["id"]: f for f in fails}
    assert set(by_id) == {100, 101, 102} and {f.stage for f in fails} == {"prepare"}
    assert "'x' is nan" in by_id[100].error and "'x' is null" in by_id[101].error
    assert "'x' is inf" in by_id[102].error
    prepared = sorted(prepared, key=lambda r: r.id)
    assert [r.id for r in prepared] == list(range(40))
    low, high = min(train, key=lambda r: r.x), max(train, key=lambda r: r.x)
    assert prepared[low.id].x == 0.0 and prepared[high.id].x == 1.0  # NaN, inf not in the range
    features = np.array([[r.x, r.color] for r in prepared], dtype=np.float32)
    labels = [int(r.x > 0.5) ^ int(r.color == 0) for r in prepared]
    model = LogisticRegression().fit(features, labels)
    (tmp_path / "m.pkl").write_bytes(pickle.dumps(model))

    later = [Sale(1000 + i, float(rng.uniform(0, 10)), COLORS[(i * 3) % 4]) for i in range(15)]
    with beam.Pipeline() as p:
        prepared = p | beam.Create(later) | Prepare(
            read_artifact_location=str(tmp_path / "a"), passthrough_fields=["id"])
        result = prepared["prepared"] | Inference(
            framework="sklearn", model_uri=str(tmp_path / "m.pkl"),
            feature_fields=["x", "color"], passthrough_fields=["id"])
        preds = collect(result["predictions"], "preds")
    got = {r.id: r.label for r in collected(preds)}
    direct = _direct(later, [], str(tmp_path / "a"), write=False)
    x = np.array([[direct[i]["x"][0], direct[i]["color"][0]] for i in sorted(direct)],
                 dtype=np.float32)
    assert got == dict(zip(sorted(direct), model.predict(x).tolist()))


# --- bad configuration fails when the pipeline is built ------------------------------------


def _build(rows: list[Any], **kwargs: Any) -> None:
    p = beam.Pipeline()
    _ = p | beam.Create(rows) | Prepare(**kwargs)


ROWS = [Sale(1, 1.0, "red")]


@pytest.mark.parametrize("kwargs, says", [
    (dict(operations=[{"operation": "ScaleTo02", "columns": ["x"]}]),
     "unknown operation 'ScaleTo02'; use one of ScaleTo01"),
    (dict(operations=[{"operation": "ScaleTo01", "columns": ["z"]}]),
     "column 'z' is not a field of the input rows (they have color, id, x)"),
    (dict(operations=[{"operation": "ScaleTo01", "columns": ["color"]}]),
     "takes number but column 'color' holds string"),
    (dict(operations=[{"operation": "TFIDF", "columns": ["color"]}]),
     "put ComputeAndApplyVocabulary on it first"),
    (dict(operations=[{"operation": "Bucketize", "columns": ["x"], "buckets": 3}]),
     "unknown argument 'buckets'; its arguments are num_buckets"),
    (dict(operations=[{"operation": "ScaleTo01", "columns": ["x"]}], passthrough_fields=["x"]),
     "'x' is also a column the operations write"),
])
def test_bad_operations_fail_at_build(tmp_path: Path, kwargs: dict, says: str) -> None:
    with pytest.raises(ConfigurationError) as e:
        _build(ROWS, write_artifact_location=str(tmp_path / "a"), **kwargs)
    assert says in str(e.value)


def test_read_mode_without_artifacts_fails_at_build(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="holds no Prepare artifacts .* run Prepare "
                       "with write_artifact_location set to it first"):
        _build(ROWS, read_artifact_location=str(tmp_path))
    with pytest.raises(ConfigurationError, match="exactly one of write_artifact_location"):
        _build(ROWS, operations=[{"operation": "ScaleTo01", "columns": ["x"]}])


# --- from Java, on Prism -------------------------------------------------------------------


def _java(prism: Any, tmp: Path, name: str, mode: str, art: Path, model: Path, rows: list[Sale],
          root: Path) -> tuple[list[dict], list[dict]]:
    from tests._java import EXAMPLES_TEST_CLASSPATH, classpath, run_java

    csv = tmp / f"{name}.csv"
    csv.write_text("".join(f"{r.id},{r.x!r},{r.color}\n".replace("nan", "NaN") for r in rows))
    out = tmp / name
    done = run_java(classpath(EXAMPLES_TEST_CLASSPATH), "io.crossinfer.examples.PrepareThenInfer",
                    str(out), mode, str(art), str(model), str(csv), str(root), *prism.flags())
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-6000:])
    read = lambda kind: [json.loads(l) for l in Path(f"{out}-{kind}.jsonl").read_text()
                         .splitlines() if l.strip()]
    return read("output"), read("failures")


@pytest.mark.java
def test_java_prepares_then_infers_on_prism(prism: Any, tmp_path: Path) -> None:
    """A Java preparation job writes the artifacts (vocabulary and scaling), a Java job reads
    them and infers in one chain; every prediction equals the Python path's."""
    from sklearn.linear_model import LogisticRegression

    root = tmp_path / "models"
    root.mkdir()
    art, model = root / "prep", root / "m.pkl"
    rng = np.random.default_rng(5)
    train = [Sale(i, float(rng.uniform(0, 10)), COLORS[i % 4]) for i in range(40)]
    prepared, fails = _java(prism, tmp_path, "write", "write", art, model,
                            train + [Sale(99, float("nan"), "red")], root)
    assert [json.loads(f["element"])["id"] for f in fails] == [99]
    assert fails[0]["stage"] == "prepare"
    prepared = sorted(prepared, key=lambda r: r["id"])
    assert [r["id"] for r in prepared] == list(range(40))
    assert {r["color"] for r in prepared} == {0, 1, 2, 3}
    assert min(r["x"] for r in prepared) == 0.0 and max(r["x"] for r in prepared) == 1.0
    x = np.array([[r["x"], r["color"]] for r in prepared], dtype=np.float32)
    fitted = LogisticRegression().fit(x, [int(a > 0.5) ^ int(c == 1) for a, c in x])
    model.write_bytes(pickle.dumps(fitted))

    later = [Sale(1000 + i, float(rng.uniform(-1, 11)), COLORS[(i * 3) % 4]) for i in range(15)]
    java_preds, fails = _java(prism, tmp_path, "read", "read", art, model, later, root)
    assert fails == []
    with beam.Pipeline() as p:
        prepared = p | beam.Create(later) | Prepare(read_artifact_location=str(art),
                                                    passthrough_fields=["id"])
        result = prepared["prepared"] | Inference(
            framework="sklearn", model_uri=str(model), feature_fields=["x", "color"],
            passthrough_fields=["id"])
        token = collect(result["predictions"], "python")
    python_preds = {r.id: r for r in collected(token)}
    assert sorted(r["id"] for r in java_preds) == sorted(python_preds)
    for r in java_preds:
        assert r["label"] == python_preds[r["id"]].label
        assert r["score"] == pytest.approx(python_preds[r["id"]].score, rel=1e-6)


def test_the_service_serves_prepare_and_keeps_artifacts_in_trusted_roots(tmp_path: Path) -> None:
    """Through a real expansion service: crossinfer.Prepare expands (write mode, in a trusted
    root, from the fields its request carries); artifacts outside the roots, or read from a
    root that is not trusted, are refused when the pipeline is built, naming the fix."""
    from tests._service_helpers import Service, expansion_request, fqn_payload

    data, trusted, outside = (tmp_path / d for d in ("data", "trusted", "outside"))
    for d in (data, trusted, outside):
        d.mkdir()
    (data / "a").mkdir()
    (data / "a" / "crossinfer_prepare.json").write_text("{}")
    service = Service("--port", "0", "--model-root", str(data), "--trusted-model-root",
                      str(trusted), log_path=tmp_path / "service.log")
    # Through the service operations travel as JSON text (as the Java library sends them): a
    # list of dicts of mixed values would be a pickled value, which the service refuses.
    ops = json.dumps([{"operation": "ScaleTo01", "columns": ["features"]}])

    def expand(**kwargs: Any) -> Any:
        return service.expand(expansion_request(fqn_payload("crossinfer.Prepare", **kwargs),
                                                unique_name="Prepare"))

    try:
        done = expand(operations=ops, write_artifact_location=str(trusted / "a"),
                      passthrough_fields=["id"])
        assert done.error == "", done.error
        assert set(done.transform.outputs) == {"prepared", "failures"}
        assert (trusted / "a" / "crossinfer_prepare.json").exists()
        refusals = {
            "outside": expand(read_artifact_location=str(outside / "a")).error,
            "untrusted": expand(read_artifact_location=str(data / "a")).error,
            "write untrusted": expand(operations=ops,
                                      write_artifact_location=str(data / "b")).error,
            "unknown": expand(operations='[{"operation": "Scale", "columns": ["features"]}]',
                              write_artifact_location=str(trusted / "c")).error,
            "again": expand(operations=ops, write_artifact_location=str(trusted / "a")).error,
        }
    finally:
        service.stop()
    assert "not a readable file under this service's model roots" in refusals["outside"]
    assert "only from a trusted model root" in refusals["untrusted"]
    assert "not trusted; " in refusals["write untrusted"]
    assert "write them there" in refusals["write untrusted"]
    assert "unknown operation 'Scale'; use one of ScaleTo01" in refusals["unknown"]
    assert "already holds files; each write job needs a new directory" in refusals["again"]
    assert not (data / "b").exists()
