"""Model updates while a job runs: the checks each new model passes, and a real streaming
pipeline on Prism whose model files change mid-stream."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
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


def test_newest_accepted_file_wins_and_refusals_are_skipped(tmp_path: Path) -> None:
    models.train_sklearn(tmp_path / "a.pkl")
    checks = _checks(tmp_path / "a.pkl")
    fn = _updates.NewestModel(str(tmp_path / "*.pkl"), time.time() - 0.5, checks)
    os.utime(tmp_path / "a.pkl", (1, 1))  # older than the job: the first model serves
    assert list(fn.process(0)) == [ModelMetadata("", "")]
    models.train_sklearn(tmp_path / "b.pkl", seed=1)
    assert list(fn.process(1)) == [ModelMetadata(str(tmp_path / "b.pkl"), "b")]
    (tmp_path / "c.pkl").write_bytes(b"garbage")
    os.utime(tmp_path / "c.pkl", (time.time() + 5, time.time() + 5))  # the newest file
    assert list(fn.process(2)) == [ModelMetadata(str(tmp_path / "b.pkl"), "b")]


def test_a_callers_model_metadata_is_checked_the_same_way(tmp_path: Path) -> None:
    models.train_sklearn(tmp_path / "a.pkl")
    models.train_sklearn(tmp_path / "b.pkl", seed=1)
    _publish(tmp_path / "c.pkl", _train_narrow)
    fn = _updates.CheckUpdates(_checks(tmp_path / "a.pkl"))
    good = ModelMetadata(str(tmp_path / "b.pkl"), "b")
    assert list(fn.process(good)) == [good]
    assert list(fn.process(ModelMetadata("", ""))) == [ModelMetadata("", "")]
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
    """Appends each prediction to a file the test reads while the job runs."""

    def __init__(self, path: str) -> None:
        self._path = path

    def process(self, row: Any):
        with open(self._path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"id": row.id, "model_id": row.model_id}) + "\n")
        return []


def _wait(what: str, ok: Any, limit: float = 180.0, detail: Any = lambda: "") -> None:
    end = time.monotonic() + limit
    while not ok():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what} {detail()}")
        time.sleep(0.25)


@pytest.mark.parametrize("large_model", [False, True], ids=["one-per-process", "large_model"])
@pytest.mark.prism
def test_models_change_mid_stream_on_prism(tmp_path: Path, large_model: bool) -> None:
    repo = tmp_path / "models"
    repo.mkdir()
    models.train_sklearn(repo / "a.pkl", seed=0)
    sink, failures = tmp_path / "predictions.jsonl", tmp_path / "failures.jsonl"
    sink.touch()
    failures.touch()
    rows_total, every = 240, 0.25  # a minute of rows, a few per window

    p = beam.Pipeline(options=PipelineOptions(
        runner="PrismRunner", prism_location=prism_binary(), streaming=True,
        # its own Prism job server, not the one Beam shares in this process (see
        # tests/test_prism_python.py)
        experiments=["disable_prism_server_singleton"]))
    start = time.time() + 1
    rows = (p | PeriodicImpulse(start_timestamp=start,
                                # The source runs on: the counted rows' windows all close
                                # while it does.
                                stop_timestamp=start + (rows_total + 80) * every,
                                fire_interval=every)
            | beam.Map(lambda t: round((float(t) - start) / every))
            | beam.Map(_row).with_output_types(models.FeatureRow)
            | beam.WindowInto(beam.window.FixedWindows(2)))
    out = rows | crossinfer.Inference(
        "sklearn", str(repo / "a.pkl"), feature_field="features", passthrough_fields=["id"],
        model_updates=str(repo / "*.pkl"), model_update_interval_secs=1,
        large_model=large_model)
    _ = out["predictions"] | "Record" >> beam.ParDo(_Sink(str(sink)))
    _ = out["failures"] | "RecordFailures" >> beam.Map(
        lambda f: failures.open("a").write(f"{f}\n") and None)
    result = p.run()
    seen = lambda: [json.loads(line) for line in sink.read_text().splitlines()]  # noqa: E731
    try:
        _wait("the first predictions", lambda: len(seen()) >= 8)
        assert {r["model_id"] for r in seen()} == {str(repo / "a.pkl")}
        _publish(repo / "b.pkl", models.train_sklearn, 1)
        _wait("predictions of the new model",
              lambda: any(r["model_id"] == str(repo / "b.pkl") for r in seen()))
        switched = max(r["id"] for r in seen())
        # A broken file, then one whose input differs, each newer than b.pkl.
        _publish(repo / "c.pkl", _garbage)
        _publish(repo / "d.pkl", _train_narrow)
        bad_written = max(r["id"] for r in seen())
        _wait("all rows", lambda: {r["id"] for r in seen()} >= set(range(rows_total)),
              limit=rows_total * every + 120,
              detail=lambda: sorted(set(range(rows_total)) - {r["id"] for r in seen()}))
        refused: dict[str, int] = {}
        for m in result.metrics().query(
                beam.metrics.MetricsFilter().with_namespace("crossinfer"))["counters"]:
            refused[m.key.metric.name] = refused.get(m.key.metric.name, 0) + m.committed
    finally:
        result.cancel()
    got = seen()
    ids = sorted(r["id"] for r in got)
    assert len(ids) == len(set(ids)), "no row is predicted twice"
    assert set(ids) >= set(range(rows_total)), "every row of a closed window is predicted"
    assert failures.read_text() == ""
    by_id = {r["id"]: r["model_id"] for r in got}
    # Windows that closed after b.pkl was accepted and after the bad files appeared: b.pkl.
    later = [by_id[i] for i in range(bad_written + 16, max(by_id) + 1)]
    assert later and set(later) == {str(repo / "b.pkl")}
    assert by_id[0] == str(repo / "a.pkl") and switched > 0
    # Each worker that checks a file counts its verdict (a file may be checked in more than
    # one worker): both bad files refused, the good one accepted, at least once each.
    assert refused.get("model_updates_refused", 0) >= 2, refused
    assert refused.get("model_updates_accepted", 0) >= 1, refused


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


@pytest.mark.java
@pytest.mark.prism
def test_java_pipeline_with_model_updates_on_prism(tmp_path: Path) -> None:
    import subprocess
    from tests._java import EXAMPLES_TEST_CLASSPATH, classpath, java_env

    repo = tmp_path / "models"
    repo.mkdir()
    models.train_sklearn(repo / "a.pkl", seed=0)
    out = tmp_path / "predictions.csv"
    rows_total = 200
    prism = _PrismJobServer(tmp_path / "prism.log")
    try:
        java = subprocess.Popen(
            ["java", "-cp", classpath(EXAMPLES_TEST_CLASSPATH),
             "io.crossinfer.examples.ModelUpdatesStream", str(out), str(rows_total),
             str(repo / "a.pkl"), str(repo / "*.pkl"), str(repo),
             "--runner=PortableRunner", f"--jobEndpoint=localhost:{prism.port}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=java_env())
        lines = lambda: out.read_text().splitlines() if out.exists() else []  # noqa: E731
        try:
            _wait("the first Java predictions", lambda: len(lines()) >= 8, limit=240)
            _publish(repo / "b.pkl", models.train_sklearn, 1)
            _wait("predictions of the new model",
                  lambda: any(line.endswith(str(repo / "b.pkl")) for line in lines()))
            _publish(repo / "c.pkl", _garbage)
            _publish(repo / "d.pkl", _train_narrow)
            bad_written = max(int(line.split(",")[0]) for line in lines())
            stdout, _ = java.communicate(timeout=rows_total / 4 + 300)
        finally:
            if java.poll() is None:
                java.kill()
                java.wait()
    finally:
        prism.stop()
    assert java.returncode == 0, stdout[-4000:]
    got = lines()
    assert not [line for line in got if line.startswith("FAIL")], got
    by_id = {int(line.split(",")[0]): line.split(",", 1)[1] for line in got}
    assert len(by_id) == len(got), "no row is predicted twice"
    assert set(by_id) >= set(range(rows_total)), "every row of a closed window is predicted"
    assert by_id[0] == str(repo / "a.pkl")
    later = {by_id[i] for i in range(bad_written + 16, max(by_id) + 1)}
    assert later == {str(repo / "b.pkl")}, later
    counters: dict[str, int] = {}
    for line in stdout.splitlines():
        if line.startswith("counter "):
            name, value = line[len("counter "):].split("=")
            counters[name] = counters.get(name, 0) + int(value)
    # Counted per check, and a file may be checked in more than one worker: at least once each.
    assert set(counters) == {"model_updates_refused", "model_updates_accepted"}, stdout[-4000:]
    assert counters["model_updates_refused"] >= 2 and counters["model_updates_accepted"] >= 1, \
        stdout[-4000:]
