"""Shared fixtures: models trained once per session, and a pipeline runner that collects."""

from __future__ import annotations

import itertools
import json
import os
import threading
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import pytest

from tests import models

def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> Any:
    """TensorFlow's tests (and Prepare's: tf.Transform) import TensorFlow when collected, and TensorFlow and torch's
    compiler cannot share a process (the other tests train torch models): they are collected
    only when named or selected with ``-m tensorflow`` (scripts/test.sh runs them apart)."""
    if collection_path.name not in ("test_tensorflow.py", "test_prepare.py"):
        return None
    named = any(Path(str(a).split("::")[0]).name == collection_path.name for a in config.args)
    # `-m tensorflow`, or `-m "tensorflow and …"` (scripts/test.sh --quick)
    selected = config.getoption("markexpr", "").strip().split(" ")[0] == "tensorflow"
    return None if named or selected else True


# The `slow` tests, in one place so the quick selection (`scripts/test.sh --quick`) is
# reviewable: whole modules that start expansion services (each start is seconds of imports),
# and single tests that start fresh interpreters or run for more than ~10 s.
SLOW_MODULES = frozenset({
    "test_expansion_service.py", "test_kept_service.py", "test_readme.py", "test_security.py",
    "test_security_fairness.py", "test_security_files.py", "test_security_fuzz.py",
    "test_security_sandbox.py", "test_sharing.py", "test_worker_pool.py"})
SLOW_TESTS = frozenset({
    "test_arguments.py::test_json_for_the_java_contract_test",
    "test_frameworks.py::test_every_framework_implements_the_protocol",
    "test_frameworks.py::test_the_service_imports_frameworks_on_use_and_its_inspectors_ahead",
    "test_model_updates.py::test_an_accepted_onnx_model_is_the_one_that_predicts",
    "test_policy.py::test_a_policy_pickles_as_a_reference_to_its_own_process",
    "test_pytorch.py::test_in_process_full_collections_skip_older_objects_for_a_bundle_only"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = item.path.name
        if module in SLOW_MODULES or f"{module}::{item.originalname}" in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def _temp_dirs_others_can_read(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """As root, the expansion service's model inspectors run as nobody, so a model root must
    be readable by others (README: the service as root). pytest makes each temporary directory
    0700: open the ones the tests make to others, as a user's model directory would be."""
    if os.getuid() == 0:
        make = tmp_path_factory.mktemp

        def mktemp(basename: str, numbered: bool = True) -> Path:
            path = make(basename, numbered)
            path.chmod(0o755)
            return path

        tmp_path_factory.mktemp = mktemp  # type: ignore[method-assign]
    yield


_collected: dict[str, list[Any]] = {}
_lock = threading.Lock()
_ids = itertools.count()


class _Collect(beam.DoFn):
    """Keeps elements in this process (the in-process runner), under one run's token."""

    def __init__(self, token: str) -> None:
        self._token = token

    def process(self, element: Any):
        with _lock:
            _collected.setdefault(self._token, []).append(element)


def collect(pcoll: beam.PCollection, name: str) -> str:
    token = f"{name}-{next(_ids)}"
    _collected[token] = []
    _ = pcoll | f"Collect{token}" >> beam.ParDo(_Collect(token))
    return token


def collected(token: str) -> list[Any]:
    return list(_collected[token])


def run(rows: list[Any], on_built: Any = None, **kwargs: Any) -> tuple[list[Any], list[Any]]:
    """Apply crossinfer.Inference to rows on the DirectRunner; (predictions, failures).

    ``on_built`` is called once the transform is applied (the model probed), before it runs.
    """
    from crossinfer import Inference

    with beam.Pipeline() as p:
        out = p | beam.Create(rows) | Inference(**kwargs)
        pred = collect(out["predictions"], "pred")
        fail = collect(out["failures"], "fail")
        if on_built is not None:
            on_built()
    return collected(pred), collected(fail)


def plan_for(rows: list[Any], **kwargs: Any) -> Any:
    """The checked plan Inference(**kwargs) builds for ``rows`` (its handler is what Beam
    gets)."""
    from crossinfer import _config, _plan, _policy

    p = beam.Pipeline()
    pcoll = p | beam.Create(rows)
    return _plan.build(_config.parse(**kwargs), pcoll.element_type, _policy.DEFAULT)


def feature_rows(x: np.ndarray, start: int = 0) -> list[beam.Row]:
    return [beam.Row(id=start + i, features=[float(v) for v in xi]) for i, xi in enumerate(x)]


def failure_ids(failures: list[Any]) -> set[int]:
    return {json.loads(f.element)["id"] for f in failures}


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def sklearn_model(model_dir: Path) -> tuple[Path, Any]:
    path = model_dir / "logreg.pkl"
    return path, models.train_sklearn(path)


@pytest.fixture(scope="session")
def mlp_model(model_dir: Path) -> tuple[Path, Any]:
    path = model_dir / "mlp.pt"
    return path, models.train_mlp(path)


@pytest.fixture(scope="session")
def mlp_onnx(model_dir: Path, mlp_model: tuple[Path, Any]) -> tuple[Path, Any]:
    import torch

    path = model_dir / "mlp.onnx"
    models.export_onnx(mlp_model[1], path, torch.zeros(2, models.N_FEATURES))
    return path, mlp_model[1]


@pytest.fixture(scope="session")
def sequence_model(model_dir: Path) -> tuple[Path, Any]:
    path = model_dir / "seq.pt"
    return path, models.make_sequence_model(path)
