"""Model updates while a job runs: the checks each new model passes, and a real streaming
pipeline on Prism whose model files change mid-stream."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import pickle
import threading
import time
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.ml.inference.base import ModelMetadata
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.periodicsequence import PeriodicImpulse

import crossinfer
from crossinfer import _config, _plan, _repository, _updates
from crossinfer._policy import DEFAULT, Policy
from crossinfer._errors import ConfigurationError, ModelLoadError
from tests import models


def prism_binary() -> str:
    """The Prism binary scripts/setup.sh provides (its locator if present, else the env)."""
    try:
        from crossinfer import _prism  # added with Prism support
        return str(_prism.locate())
    except ImportError:
        pass
    path = os.environ.get("CROSSINFER_PRISM") or str(
        Path.home() / ".cache/crossinfer/prism/v2.77.0/prism")
    if not os.access(path, os.X_OK):
        pytest.fail(f"no Prism binary at {path}; run scripts/setup.sh or set CROSSINFER_PRISM")
    return path


def _train_narrow(path: Path) -> None:
    """A classifier of the same kind that takes 5 features instead of 8: a mismatch."""
    from sklearn.linear_model import LogisticRegression
    x, y = models.dataset()
    with open(path, "wb") as f:
        pickle.dump(LogisticRegression(max_iter=500).fit(x[:, :5], y), f)


def _publish(path: Path, make: Any, *args: Any) -> None:
    """Writes a model as a pipeline's users should: elsewhere, then renamed into the pattern
    (a half-written file would be checked, and refused, as it is)."""
    tmp = path.with_suffix(".partial")
    make(tmp, *args)
    os.replace(tmp, path)


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x80\x04 not a model")


def _checks(model: Path, under: Policy = DEFAULT, **extra: Any) -> _updates.Checks:
    config = _config.parse(framework="sklearn", model_uri=str(model), feature_field="features")
    plan = _plan.build(config, models.FeatureRow, under)
    return dataclasses.replace(_updates.checks_for(config, plan.signature, under), **extra)


# --- the checks, without a runner -----------------------------------------------------------

def test_same_signature_is_accepted_and_mismatch_or_broken_refused(tmp_path: Path) -> None:
    models.train_sklearn(tmp_path / "a.pkl", seed=0)
    checks = _checks(tmp_path / "a.pkl")
    models.train_sklearn(tmp_path / "b.pkl", seed=1)
    assert _updates.check_model(checks, str(tmp_path / "b.pkl")).input_shape == (
        models.N_FEATURES,)
    _train_narrow(tmp_path / "narrow.pkl")
    with pytest.raises(ModelLoadError, match=r"input_shape \[5\] \(running: \[8\]\)"):
        _updates.check_model(checks, str(tmp_path / "narrow.pkl"))
    (tmp_path / "broken.pkl").write_bytes(b"not a pickle")
    with pytest.raises(ModelLoadError, match="did not load as a sklearn model"):
        _updates.check_model(checks, str(tmp_path / "broken.pkl"))


def test_roots_travel_with_the_checks(tmp_path: Path) -> None:
    inside, outside = tmp_path / "repo", tmp_path / "elsewhere"
    inside.mkdir()
    outside.mkdir()
    models.train_sklearn(inside / "a.pkl")
    models.train_sklearn(outside / "b.pkl", seed=1)
    models.train_sklearn(inside / "c.pkl", seed=2)
    policy = Policy(repository=_repository.Repository(trusted_roots=[str(inside)]))
    # (policy=None: as a worker in another process has them, the roots as plain data only)
    checks = _checks(inside / "a.pkl", policy, policy=None)
    _updates.check_pattern(str(inside / "*.pkl"), policy)
    for pattern in (str(outside / "*.pkl"), str(inside / ".." / "elsewhere" / "*.pkl"),
                    "models/*.pkl"):
        with pytest.raises(ModelLoadError, match="model_updates="):
            _updates.check_pattern(pattern, policy)
    assert checks.trusted_roots == (os.path.realpath(inside) + "/",)
    # Applied where the worker runs, with no repository there.
    with pytest.raises(ModelLoadError, match="not a readable file under this service's"):
        _updates.check_model(checks, str(outside / "b.pkl"))
    assert _updates.check_model(checks, str(inside / "c.pkl")).output == "probabilities"
    # A pickle under a data-only root is refused like a first model would be.
    data_only = dataclasses.replace(checks, roots=checks.trusted_roots, trusted_roots=())
    with pytest.raises(ModelLoadError, match="runs code when loaded"):
        _updates.check_model(data_only, str(inside / "c.pkl"))


def test_each_window_gets_the_newest_accepted_file_landed_by_its_end(tmp_path: Path) -> None:
    models.train_sklearn(tmp_path / "a.pkl")
    checks = _checks(tmp_path / "a.pkl")
    first = str(tmp_path / "a.pkl")
    fn = _updates.WindowModel(str(tmp_path / "*.pkl"), time.time(), first, checks)
    # Older than the job: the first model serves.
    assert fn.choose(time.time() + 100) == ModelMetadata(first, "a")
    models.train_sklearn(tmp_path / "b.pkl", seed=1)
    landed = os.stat(tmp_path / "b.pkl").st_ctime
    digest = hashlib.sha256((tmp_path / "b.pkl").read_bytes()).hexdigest()[:12]
    b = ModelMetadata(f"{tmp_path / 'b.pkl'}@{digest}", "b")
    assert fn.choose(landed + 100) == b
    # A window that ended before b.pkl landed keeps the first model, however late it is asked.
    assert fn.choose(landed - 0.001) == ModelMetadata(first, "a")
    (tmp_path / "c.pkl").write_bytes(b"garbage")
    future = time.time() + 5
    os.utime(tmp_path / "c.pkl", (future, future))  # the newest file, refused: passed over
    assert fn.choose(future + 1) == b
    # Two files that land at once: the later name wins, for every window after them.
    models.train_sklearn(tmp_path / "e.pkl", seed=2)
    models.train_sklearn(tmp_path / "d.pkl", seed=3)
    for name in ("d.pkl", "e.pkl"):
        os.utime(tmp_path / name, (future + 2, future + 2))
    e = fn.choose(future + 3)
    assert _updates.path_of(e.model_id) == str(tmp_path / "e.pkl") and e.model_name == "e"
    assert fn.choose(future + 1.5) == b


def test_a_callers_model_metadata_is_checked_the_same_way(tmp_path: Path) -> None:
    models.train_sklearn(tmp_path / "a.pkl")
    models.train_sklearn(tmp_path / "b.pkl", seed=1)
    _publish(tmp_path / "c.pkl", _train_narrow)
    fn = _updates.CheckUpdates(_checks(tmp_path / "a.pkl"), str(tmp_path / "a.pkl"))
    good = ModelMetadata(str(tmp_path / "b.pkl"), "b")
    assert list(fn.process(good)) == [good]
    # Beam's "no newer model" names the first model: an empty id would make RunInference
    # reload its own first tag after an update (the model would go back).
    assert list(fn.process(ModelMetadata("", ""))) == [ModelMetadata(str(tmp_path / "a.pkl"), "")]
    assert list(fn.process(ModelMetadata(str(tmp_path / "c.pkl"), "c"))) == []
    assert list(fn.process("not metadata")) == []


def test_an_accepted_onnx_model_is_the_one_that_predicts(tmp_path: Path) -> None:
    """What RunInference does with an accepted update, on crossinfer's handler: the path is
    set, the model loaded from it, and model_id names it (Beam's ONNX handler alone would
    keep loading the first file)."""
    import torch

    example = torch.zeros(1, models.N_FEATURES)
    first, second = models.train_mlp(tmp_path / "a.pt", seed=0), \
        models.train_mlp(tmp_path / "b.pt", seed=1)
    models.export_onnx(first, tmp_path / "a.onnx", example)
    models.export_onnx(second, tmp_path / "b.onnx", example)
    config = _config.parse(framework="onnx", model_uri=str(tmp_path / "a.onnx"),
                           feature_field="features", output="logits")
    plan = _plan.build(config, models.FeatureRow, DEFAULT)
    checks = _updates.checks_for(config, plan.signature, DEFAULT)
    assert _updates.check_model(checks, str(tmp_path / "b.onnx")).input_name == "x"
    rows = [_row(i) for i in range(16)]
    x = torch.tensor([r.features for r in rows], dtype=torch.float32)

    plan.handler.update_model_path(str(tmp_path / "b.onnx"))
    outcome, = plan.handler.run_inference(rows, plan.handler.load_model())
    assert outcome.model_id == str(tmp_path / "b.onnx")
    np.testing.assert_allclose(outcome.output, second(x).detach().numpy(), rtol=1e-4,
                               atol=1e-5)
    assert not np.allclose(outcome.output, first(x).detach().numpy(), atol=1e-3)


def test_bad_combinations_fail_at_construction(tmp_path: Path) -> None:
    models.train_sklearn(tmp_path / "a.pkl")
    base = dict(feature_field="features")
    with pytest.raises(ConfigurationError, match="model_updates cannot be combined with models"):
        _config.parse(framework="sklearn", models={"x": str(tmp_path / "a.pkl")},
                      model_key_field="id", model_updates=str(tmp_path / "*.pkl"), **base)
    with pytest.raises(ConfigurationError, match="give model_updates"):
        _config.parse(framework="sklearn", model_uri=str(tmp_path / "a.pkl"),
                      model_update_interval_secs=5, **base)
    with pytest.raises(ConfigurationError, match="model_updates is only for"):
        _config.parse(framework="custom", handler="tests.models:sklearn_handler",
                      model_updates=str(tmp_path / "*.pkl"), **base)

    def apply(pattern: str, windowed: bool = True) -> None:
        with beam.Pipeline() as p:
            rows = p | beam.Create([models.FeatureRow(0, [0.0] * 8)])
            if windowed:
                rows = rows | beam.WindowInto(beam.window.FixedWindows(10))
            _ = rows | crossinfer.Inference("sklearn", str(tmp_path / "a.pkl"),
                                            model_updates=pattern, **base)

    with pytest.raises(ConfigurationError, match="matches no file"):
        apply(str(tmp_path / "*.onnx"))
    with pytest.raises(ConfigurationError, match="needs windowed input"):
        apply(str(tmp_path / "*.pkl"), windowed=False)


# --- a real streaming pipeline on Prism ----------------------------------------------------

def _row(i: int) -> models.FeatureRow:
    rng = np.random.default_rng(i)
    return models.FeatureRow(id=i, features=[float(v) for v in rng.normal(size=models.N_FEATURES)])


class _Sink(beam.DoFn):
    """Appends each output row, with its window's start, to a file the test reads."""

    def __init__(self, path: str) -> None:
        self._path = path

    def process(self, row: Any, win: Any = beam.DoFn.WindowParam):
        record = {"id": getattr(row, "id", None), "window": float(win.start),
                  "model_id": getattr(row, "model_id", None)}
        if record["id"] is None:  # a failure: its row's id, from the row as JSON
            record["id"] = json.loads(row.element)["id"]
        with open(self._path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        return []


def _wait(what: str, ok: Any, limit: float = 180.0, detail: Any = lambda: "") -> None:
    end = time.monotonic() + limit
    while not ok():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what} {detail()}")
        time.sleep(0.25)


BAD_EVERY = 9  # every 9th row has too few features: a failure, mixed in with the predictions


def _stream_row(i: int) -> models.FeatureRow:
    row = _row(i)
    return row._replace(features=row.features[:3]) if i % BAD_EVERY == 0 else row


def _expected_model(end: float, landed: dict[str, float], refused: set[str], first: str) -> str:
    """The model crossinfer promises a window ending at ``end``: the newest accepted file
    landed by then (the later name on a tie), else the first."""
    newer = sorted(((t, path) for path, t in landed.items() if t <= end and path not in refused),
                   reverse=True)
    return newer[0][1] if newer else first


def run_updates_stream(tmp_path: Path, large_model: bool = False, backlog: float = 10.0,
                       live: float = 24.0, every: float = 0.1, window: float = 2.0) -> dict:
    """A Python streaming job on Prism that starts ``backlog`` seconds late (its first rows
    are already due), with failures mixed in and model files landing while it runs: a good
    one, a broken one, one whose input differs, then two good ones at once. Its rows' source
    ends, and the job then finishes by itself (every open window scored). Returns what came
    out, the files' landing times and the job's counters (bench/streaming.py repeats it)."""
    repo = tmp_path / "models"
    repo.mkdir()
    models.train_sklearn(repo / "a.pkl", seed=0)
    os.utime(repo / "a.pkl", (1, 1))
    sink = tmp_path / "out.jsonl"
    sink.touch()
    p = beam.Pipeline(options=PipelineOptions(
        runner="PrismRunner", prism_location=prism_binary(), streaming=True,
        # its own Prism job server, not the one Beam shares in this process (see
        # tests/test_prism_python.py)
        experiments=["disable_prism_server_singleton"]))
    start = time.time() - backlog
    total = round((backlog + live) / every)
    rows = (p | PeriodicImpulse(start_timestamp=start, stop_timestamp=start + total * every,
                                fire_interval=every)
            | beam.Map(lambda t: round((float(t) - start) / every))
            | beam.Map(_stream_row).with_output_types(models.FeatureRow)
            | beam.WindowInto(beam.window.FixedWindows(window)))
    out = rows | crossinfer.Inference(
        "sklearn", str(repo / "a.pkl"), feature_field="features", passthrough_fields=["id"],
        model_updates=str(repo / "*.pkl"), large_model=large_model)
    _ = out["predictions"] | "Record" >> beam.ParDo(_Sink(str(sink)))
    _ = out["failures"] | "RecordFailures" >> beam.ParDo(_Sink(str(sink)))
    result = p.run()
    landed: dict[str, float] = {}

    def publish(at: float, name: str, make: Any, *args: Any) -> None:
        time.sleep(max(0.0, at - time.time()))
        _publish(repo / name, make, *args)
        st = os.stat(repo / name)
        landed[str(repo / name)] = max(st.st_mtime, st.st_ctime)

    live_from = start + backlog
    try:
        publish(live_from + 4, "b.pkl", models.train_sklearn, 1)
        publish(live_from + 8, "c.pkl", _garbage)
        publish(live_from + 8, "d.pkl", _train_narrow)
        publish(live_from + 12, "e.pkl", models.train_sklearn, 2)
        publish(live_from + 12, "f.pkl", models.train_sklearn, 3)  # right after e.pkl
        state = result.wait_until_finish(duration=int((live + 150) * 1000))
        counters: dict[str, int] = {}
        if state == "DONE":
            for m in result.metrics().query(
                    beam.metrics.MetricsFilter().with_namespace("crossinfer"))["counters"]:
                counters[m.key.metric.name] = counters.get(m.key.metric.name, 0) + m.committed
    finally:
        if str(result.state) not in ("DONE", "FAILED", "CANCELLED"):
            result.cancel()
    return {"state": str(state), "records": [json.loads(x) for x in sink.read_text().splitlines()],
            "landed": landed, "refused": {str(repo / "c.pkl"), str(repo / "d.pkl")},
            "first": str(repo / "a.pkl"), "total": total, "window": window,
            "counters": counters, "start": start,
            # f.pkl lands right after e.pkl: a window may never see e.pkl alone
            "shadowed": {str(repo / "e.pkl")}}


def check_updates_stream(run: dict) -> None:
    """What crossinfer promises of such a job: it ends once its source ends; every row is in
    exactly one output; each window has one model, the newest accepted file landed by the
    window's end, so the model never goes back. ``run["shadowed"]``: accepted files that may
    serve no window (another landed right after them); every other accepted file and the first
    model serve some window, and the counters count each refused and accepted file."""
    assert run["state"] == "DONE", "the job ends by itself once its rows' source ends"
    records, total = run["records"], run["total"]
    ids = collections.Counter(r["id"] for r in records)
    assert sorted(ids) == list(range(total)) and set(ids.values()) == {1}, (
        "every row in exactly one output: missing "
        f"{sorted(set(range(total)) - set(ids))}, twice {[i for i, n in ids.items() if n > 1]}")
    failed = {r["id"] for r in records if r["model_id"] is None}
    assert failed == set(range(0, total, BAD_EVERY))
    by_window: dict[float, set[str]] = collections.defaultdict(set)
    for r in records:
        if r["model_id"] is not None:
            by_window[r["window"]].add(r["model_id"])
    assert all(len(m) == 1 for m in by_window.values()), \
        {w: m for w, m in by_window.items() if len(m) > 1}
    order = [run["first"], *sorted(run["landed"], key=run["landed"].get)]
    used = [_updates.path_of(next(iter(by_window[w]))) for w in sorted(by_window)]
    trace = [(w, order.index(u)) for w, u in zip(sorted(by_window), used)]
    assert [i for _, i in trace] == sorted(i for _, i in trace), (
        "the model never goes back", trace, sorted(run["landed"].values()))
    for w in sorted(by_window):
        want = _expected_model(w + run["window"], run["landed"], run["refused"], run["first"])
        assert _updates.path_of(next(iter(by_window[w]))) == want, (w, by_window[w], want)
    shown = {p for p in run["landed"]
             if p not in run["refused"] and p not in run.get("shadowed", ())}
    assert {_updates.path_of(m) for ms in by_window.values() for m in ms} >= {
        run["first"], *shown}
    assert run["counters"].get("model_updates_refused", 0) >= len(run["refused"]), \
        run["counters"]
    assert run["counters"].get("model_updates_accepted", 0) >= len(shown), run["counters"]


@pytest.mark.prism
@pytest.mark.parametrize("large_model", [False, True], ids=["one-per-process", "large_model"])
def test_models_change_mid_stream_on_prism_with_a_backlog(tmp_path: Path,
                                                          large_model: bool) -> None:
    check_updates_stream(run_updates_stream(tmp_path, large_model=large_model))


# --- a Java pipeline with withModelUpdates, end to end on Prism ---------------------------

class _PrismJobServer:
    """The Prism binary as a job server on a free port, stopped by the test."""

    def __init__(self, log: Path) -> None:
        import socket
        import subprocess
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(
            [prism_binary(), "--job_port", str(self.port), "--serve_http=false"],
            stdout=self._log, stderr=subprocess.STDOUT)
        end = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > end:
                    self.stop()
                    raise AssertionError(f"Prism did not start: {log.read_text()[-2000:]}")
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except Exception:  # noqa: BLE001 - then it is killed
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def run_java_updates_stream(tmp_path: Path, framework: str, first: Path, updates: list,
                            rows_total: int, flags: tuple[str, ...] = ()) -> dict:
    """io.crossinfer.examples.ModelUpdatesStream (CrossInference.of(framework, first) with
    withModelUpdates on first's folder and suffix) on Prism: ``rows_total`` rows at 10 a second,
    every ninth with too few features. Once the job is submitted, each of ``updates``
    (seconds to wait, file name, make, *args) is published into first's folder. The source
    ends and the job ends by itself; returns what check_updates_stream reads (the counters reach
    Java through PipelineResult.metrics()), "refused" left to the caller."""
    import subprocess
    from tests._java import EXAMPLES_TEST_CLASSPATH, classpath, java_env

    repo = first.parent
    out = tmp_path / "predictions.csv"
    prism = _PrismJobServer(tmp_path / "prism.log")
    landed: dict[str, float] = {}
    launched = time.time()
    printed: list[str] = []
    seen: dict[str, float] = {}  # when each of Java's lines came, from the launch

    def read(stream: Any) -> None:
        for line in stream:
            seen.setdefault(line.strip(), round(time.time() - launched, 1))
            printed.append(line)

    try:
        java = subprocess.Popen(
            ["java", *flags, "-cp", classpath(EXAMPLES_TEST_CLASSPATH),
             "io.crossinfer.examples.ModelUpdatesStream", str(out), str(rows_total), framework,
             str(first), str(repo / f"*{first.suffix}"), str(repo),
             "--runner=PortableRunner", f"--jobEndpoint=localhost:{prism.port}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=java_env())
        reader = threading.Thread(target=read, args=(java.stdout,), daemon=True)
        reader.start()
        try:
            # Once the job is submitted (built: its start time is before any update).
            _wait("the job's submission",
                  lambda: "submitted\n" in printed or java.poll() is not None, limit=240)
            assert "submitted\n" in printed, "".join(printed)[-4000:]
            for pause, name, make, *args in updates:
                time.sleep(pause)
                _publish(repo / name, make, *args)
                st = os.stat(repo / name)
                landed[str(repo / name)] = max(st.st_mtime, st.st_ctime)
                seen[f"published {name}"] = round(time.time() - launched, 1)
            java.wait(timeout=rows_total / 10 + 300)
            reader.join(10)
            stdout = "".join(printed)
        finally:
            if java.poll() is None:
                java.kill()
                java.wait()
    finally:
        prism.stop()
    assert java.returncode == 0, stdout[-4000:]
    assert "state=DONE" in stdout, stdout[-4000:]
    records = []
    for line in out.read_text().splitlines() if out.exists() else []:
        kind, rest = line.split(",", 1)
        if kind == "F":
            records.append({"id": json.loads(rest)["id"], "window": None, "model_id": None})
        else:
            i, window, _, model_id = rest.split(",", 3)
            records.append({"id": int(i), "window": int(window) / 1000, "model_id": model_id})
    counters: dict[str, int] = {}
    for line in stdout.splitlines():
        if line.startswith("counter "):
            name, value = line[len("counter "):].split("=")
            counters[name] = counters.get(name, 0) + int(value)
    seen["ended"] = round(time.time() - launched, 1)
    print(framework, {k: v for k, v in seen.items()
                      if k.split(" ")[0] in ("warmed", "submitted", "published", "ended")})
    return {"state": "DONE", "records": records, "landed": landed, "total": rows_total,
            "first": str(first), "window": 2.0, "counters": counters}


@pytest.mark.java
@pytest.mark.prism
def test_java_pipeline_with_model_updates_on_prism(tmp_path: Path) -> None:
    """Java on Prism: failures mixed in, a good file, a broken one, one whose input differs,
    then two good ones at once; the rate source ends and the job ends by itself. Every row is
    in one output, each window has one model and it never goes back; the counters reach Java
    through PipelineResult.metrics()."""
    repo = tmp_path / "models"
    repo.mkdir()
    models.train_sklearn(repo / "a.pkl", seed=0)
    os.utime(repo / "a.pkl", (1, 1))
    # 30 s at 10 rows/s from the end of the program's warm-up (-DwarmUp: the expansion service
    # started and the transform expanded once; the JVM's start-up takes 20-70 s here, and a
    # fixed delay from the JVM's start let every file land before the first row). The rows due
    # before submission are a backlog the first model scores; the first file lands 2 s after
    # submission, so a window ends before it, and the last 6 s after, well within the stream.
    run = run_java_updates_stream(
        tmp_path, "sklearn", repo / "a.pkl",
        [(2, "b.pkl", models.train_sklearn, 1), (2, "c.pkl", _garbage),
         (0, "d.pkl", _train_narrow), (2, "e.pkl", models.train_sklearn, 2),
         (0, "f.pkl", models.train_sklearn, 3)],
        rows_total=300, flags=("-DwarmUp=true",))
    check_updates_stream({**run, "refused": {str(repo / "c.pkl"), str(repo / "d.pkl")},
                          "shadowed": {str(repo / "e.pkl")}})


# The same program with the other frameworks that take model updates: (suffix, the builder in
# tests/_conformance_cases.py, called as builder(path, seed) and builder(path, 0, width=5)).
_STREAM_MODELS = {"xgboost": ("json", "_xgb_train"), "tensorflow": ("keras", "_keras_dense")}
_BUILD = """
import sys
from pathlib import Path
from tests import _conformance_cases as cases
build, d, ext = getattr(cases, sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
build(d / f"a.{ext}", 0)
build(d / f"b.{ext}", 1)
build(d / f"narrow.{ext}", 0, width=5)
"""


@pytest.mark.java
@pytest.mark.prism
@pytest.mark.parametrize("framework", [
    "xgboost", pytest.param("tensorflow", marks=pytest.mark.tensorflow)])
def test_java_pipeline_with_model_updates_on_prism_for(tmp_path: Path, framework: str) -> None:
    """Model updates for XGBoost (a JSON model) and TensorFlow (a .keras file) from Java on
    Prism: a good file, then one whose input differs (refused, counted). The models are built
    in a child interpreter (TensorFlow stays out of this process); the program expands its
    transform once before its rows' clock starts (-DwarmUp), so its 30 s stream is short."""
    import shutil
    import subprocess
    import sys
    from tests._java import java_env

    ext, builder = _STREAM_MODELS[framework]
    built, repo = tmp_path / "built", tmp_path / "models"
    built.mkdir()
    repo.mkdir()
    subprocess.run([sys.executable, "-c", _BUILD, builder, str(built), ext], check=True,
                   env=java_env(), timeout=300)
    first = repo / f"a.{ext}"
    shutil.copyfile(built / first.name, first)
    os.utime(first, (1, 1))
    copy = lambda to, name: shutil.copyfile(built / name, to)  # noqa: E731
    # As for sklearn above: rows from the end of the warm-up, files from 2 s after submission.
    run = run_java_updates_stream(
        tmp_path, framework, first,
        [(2, f"b.{ext}", copy, f"b.{ext}"), (2, f"narrow.{ext}", copy, f"narrow.{ext}")],
        rows_total=300, flags=("-DwarmUp=true",))
    check_updates_stream({**run, "refused": {str(repo / f"narrow.{ext}")}})
    # The new model's outputs name it by path and content: path@sha256 prefix.
    b = repo / f"b.{ext}"
    named = {r["model_id"] for r in run["records"]
             if r["model_id"] is not None and _updates.path_of(r["model_id"]) == str(b)}
    assert named == {f"{b}@{hashlib.sha256(b.read_bytes()).hexdigest()[:12]}"}, named
