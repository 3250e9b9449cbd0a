"""The private Beam names crossinfer relies on: all in crossinfer._beam, each still there in the
installed Beam, and the Beam version checked where it matters."""

from __future__ import annotations

import logging
import os
import queue
import re
import subprocess
import sys
from pathlib import Path

import apache_beam
import pytest
from apache_beam import coders
from apache_beam.ml.inference.sklearn_inference import SklearnModelHandlerNumpy
from apache_beam.runners.portability.fn_api_runner import worker_handlers
from apache_beam.runners.worker import worker_pool_main

from crossinfer import Inference, _beam

REPO = Path(__file__).resolve().parent.parent
# Private Beam attributes the project used before they moved into crossinfer._beam (or were
# replaced by public hooks), besides the ones _beam names.
_REPLACED = ("_default_environment", "_model_uri", "_provider_options", "_state_cache_size",
             "_data_buffer_time_limit_ms", "prediction_type._fields")


def _sources() -> list[Path]:
    found = []
    for top in ("python", "expansion_service"):
        found += [p for p in (REPO / top).rglob("*.py") if p.name != "_beam.py"]
    assert len(found) > 30
    return found


def test_no_other_module_uses_a_private_beam_name() -> None:
    names = [n.split(".", 1)[1] for n in _beam.PRIVATE_NAMES] + list(_REPLACED)
    imports = re.compile(
        r"from apache_beam[\w.]* import [^\n]*\b_[a-z]\w*|apache_beam[\w.]*\._[a-z]")
    offenders = []
    for path in _sources():
        text = path.read_text()
        for name in names:
            if re.search(rf"[.\"']{re.escape(name)}\b", text):
                offenders.append(f"{path.relative_to(REPO)}: {name}")
        offenders += [f"{path.relative_to(REPO)}: {m.group(0)}" for m in imports.finditer(text)]
    assert not offenders, "private Beam names outside crossinfer/_beam.py: " + ", ".join(offenders)


def test_each_private_name_is_still_where_beam_keeps_it(monkeypatch) -> None:
    # The job server's shutdown grace.
    monkeypatch.setattr(worker_handlers.GrpcServer, "_DEFAULT_SHUTDOWN_TIMEOUT_SECS",
                        worker_handlers.GrpcServer._DEFAULT_SHUTDOWN_TIMEOUT_SECS)
    assert _beam.set_job_server_grace(0.75)
    assert worker_handlers.GrpcServer._DEFAULT_SHUTDOWN_TIMEOUT_SECS == 0.75

    # The coder registry: a coder registered for a class is forgotten with it.
    class Generated:
        pass

    coders.registry.register_coder(Generated, coders.PickleCoder)
    assert isinstance(coders.registry.get_coder(Generated), coders.PickleCoder)
    _beam.forget_coders([Generated])
    assert not isinstance(coders.registry.get_coder(Generated), coders.PickleCoder)
    assert Generated not in coders.registry.custom_types

    # The worker pool's workers: the dict Beam's own StopWorker stops them from.
    pool = worker_pool_main.BeamFnExternalWorkerPoolServicer()
    harness_inbox: queue.Queue = queue.Queue()
    harness = type("Harness", (), {"_responses": harness_inbox})()
    _beam.worker_threads(pool)["w1"] = harness
    pool.StopWorker(worker_pool_main.beam_fn_api_pb2.StopWorkerRequest(worker_id="w1"), None)
    assert "w1" not in _beam.worker_threads(pool) and harness_inbox.qsize() == 1

    # The handler inside Beam's pre/postprocessing wrappers.
    base = SklearnModelHandlerNumpy("model.pkl")
    assert _beam.wrapped_handler(base.with_preprocess_fn(list)) is base
    assert _beam.wrapped_handler(base.with_postprocess_fn(list)) is base
    assert _beam.wrapped_handler(base) is None


def test_another_beam_warns_the_library_and_stops_the_service(monkeypatch, caplog) -> None:
    assert _beam.unsupported() is None  # the Beam this project pins
    monkeypatch.setattr(apache_beam, "__version__", "2.99.0")
    monkeypatch.setattr(_beam, "_warned", [])
    problem = _beam.unsupported()
    assert problem and "Apache Beam 2.99.0" in problem and "2.77.x" in problem
    with pytest.raises(RuntimeError, match="2.99.0"):
        _beam.check_service()
    with caplog.at_level(logging.WARNING, logger="crossinfer._beam"):
        Inference(framework="sklearn", model_uri="m.pkl")
        Inference(framework="sklearn", model_uri="m.pkl")
    assert [r.getMessage() for r in caplog.records].count(f"crossinfer: {problem}") == 1


def test_the_service_refuses_to_start_on_another_beam() -> None:
    env = dict(os.environ, PYTHONPATH=f"{REPO / 'python'}{os.pathsep}{REPO}")
    started = subprocess.run(
        [sys.executable, "-c",
         "import sys, apache_beam; apache_beam.__version__ = '2.99.0'; "
         "from expansion_service._cli import main; sys.exit(main(['--port', '0']))"],
        capture_output=True, text=True, env=env, timeout=300)
    assert started.returncode == 2, started.stderr
    assert "Apache Beam 2.99.0 is installed" in started.stderr
    assert "listening" not in started.stdout
