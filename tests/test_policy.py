"""The policy an Inference is built under: one value, passed along, never a process setting.

Two expansions built at the same time under two policies (as two requests of a service, or two
services in one process) each see only their own allowlist, model repository and inspectors;
a Python pipeline gets the default; a policy travels to the workers as a reference to its own
process."""

from __future__ import annotations

import gc
import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import apache_beam as beam
import pytest

from crossinfer import CallableNotAllowedError, Inference, ModelLoadError, _inspect, _policy
from crossinfer._policy import DEFAULT, Policy, applied
from crossinfer._repository import Repository
from tests import models

REPO = Path(__file__).resolve().parent.parent


class Meeting:
    """An inspection runner that opens the files in this process (as the service's inspector
    child does, under the same repository) once both expansions have reached their inspection:
    from then on the two run side by side."""

    def __init__(self, barrier: threading.Barrier, repository: Repository) -> None:
        self.barrier, self.files = barrier, Policy(repository=repository)
        self.opened: list[str] = []

    def __call__(self, kwargs: Mapping[str, Any], key: Optional[str]) -> Mapping[str, Any]:
        self.barrier.wait()
        self.opened.append(kwargs["models"][key])
        return _inspect.describe_kwargs(kwargs, key, self.files)


def double(row: Any) -> list[float]:
    """A preprocess (what the allowlists below admit or refuse)."""
    return [2.0 * v for v in row.features]


def _rows() -> list[beam.Row]:
    x, _ = models.dataset(n=4, seed=3)
    return [beam.Row(id=i, key="x" if i % 2 else "y", features=[float(v) for v in x[i]])
            for i in range(len(x))]


def _expand(models_: dict[str, str], preprocess: str = "tests.test_policy:double") -> Any:
    pipeline = beam.Pipeline()
    return pipeline | beam.Create(_rows()) | Inference(
        framework="sklearn", models=models_, model_key_field="key", preprocess=preprocess)


def _service_like(tmp_path: Path, name: str, barrier: threading.Barrier,
                  allow: tuple[str, ...]) -> tuple[Policy, dict[str, str]]:
    root = tmp_path / name
    root.mkdir()
    uris = {}
    for seed, key in enumerate(("x", "y")):
        models.train_sklearn(root / f"{key}.pkl", seed=seed)
        uris[key] = str((root / f"{key}.pkl").resolve())
    repository = Repository(trusted_roots=[str(root)])
    return Policy(allowlist=allow, repository=repository,
                  runner=Meeting(barrier, repository)), uris


def test_two_concurrent_expansions_keep_their_own_policies(tmp_path: Path) -> None:
    barrier = threading.Barrier(2, timeout=120)
    policies, uris = {}, {}
    for name in ("a", "b"):
        policies[name], uris[name] = _service_like(
            tmp_path, name, barrier, ("tests.test_policy.*",))
    results: dict[str, Any] = {}

    def expand(name: str) -> None:
        try:
            with applied(policies[name]):
                results[name] = _expand(uris[name])
        except Exception as e:  # noqa: BLE001 - reported by the assertions below
            results[name] = e

    threads = [threading.Thread(target=expand, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    # Both were inside their inspections at once (twice: one per model), and each one's
    # files were checked against its own repository and opened by its own runner.
    for name in ("a", "b"):
        assert isinstance(results[name], dict), results[name]
        assert set(results[name]) == {"predictions", "failures"}
        assert sorted(policies[name].runner.opened) == sorted(uris[name].values())
    # And each policy refuses what the other one admits.
    with applied(policies["a"]), pytest.raises(ModelLoadError, match="not a readable file"):
        _expand(uris["b"])
    assert not any(u in policies["a"].runner.opened for u in uris["b"].values())


def test_allowlists_of_two_policies_do_not_mix(tmp_path: Path) -> None:
    barrier = threading.Barrier(1)
    strict, uris = _service_like(tmp_path, "strict", barrier, ())
    loose, _ = _service_like(tmp_path, "loose", barrier, ("tests.test_policy.*",))
    with applied(loose):
        with applied(strict), pytest.raises(CallableNotAllowedError, match="allowed now: nothing"):
            _expand(uris)
        with pytest.raises(ModelLoadError, match="not a readable file"):  # past the allowlist
            _expand(uris)
    assert _policy.current() is DEFAULT


def test_a_python_pipeline_builds_under_the_default_policy(tmp_path: Path) -> None:
    models.train_sklearn(tmp_path / "m.pkl")
    assert DEFAULT.allowlist is None and DEFAULT.repository is None and DEFAULT.runner is None
    transform = Inference(framework="sklearn", model_uri=str(tmp_path / "m.pkl"),
                          preprocess="tests.test_policy:double")
    assert transform._policy is DEFAULT
    # Any importable callable, any file: the author's own code.
    _ = beam.Pipeline() | beam.Create(_rows()) | transform
    # A policy applied in one thread is not seen by another.
    seen = []
    with applied(Policy(allowlist=())):
        worker = threading.Thread(target=lambda: seen.append(_policy.current()))
        worker.start()
        worker.join()
    assert seen == [DEFAULT]


def test_a_policy_pickles_as_a_reference_to_its_own_process(tmp_path: Path) -> None:
    barrier = threading.Barrier(1)
    policy, _ = _service_like(tmp_path, "svc", barrier, ("tests.test_policy.*",))
    # The service's own workers (threads of it) get the live value: its held roots, its runner.
    assert pickle.loads(pickle.dumps(policy)) is policy
    # Another process (a remote worker) gets the allowlist and the same roots, opened there
    # (files are read through them, never by name), but none of this process's inspectors.
    env = dict(os.environ, PYTHONPATH=f"{REPO / 'python'}{os.pathsep}{REPO}")
    elsewhere = subprocess.run(
        [sys.executable, "-c", "import pickle, sys; p = pickle.loads(sys.stdin.buffer.read()); "
                               "print(p.allowlist, p.repository.describe(), p.runner)"],
        input=pickle.dumps(policy), capture_output=True, env=env, timeout=120, check=True)
    assert elsewhere.stdout.decode().strip() == (
        f"('tests.test_policy.*',) {policy.repository.describe()} None")
    # A policy whose service is gone is never replaced by one that opens anything anywhere.
    gone = pickle.dumps(Policy(allowlist=(), repository=policy.repository))
    gc.collect()
    with pytest.raises(ModelLoadError, match="has stopped"):
        pickle.loads(gone)


def test_applied_takes_only_a_policy() -> None:
    with pytest.raises(TypeError, match="crossinfer Policy"):
        with applied({"allowlist": None}):  # type: ignore[arg-type]
            pass
