"""Every framework keeps every guarantee: one suite, parametrized over the registry.

Each registry row is checked with the models tests/_conformance_cases.py builds for it (a row
without a builder fails ``test_every_registry_row_is_checked``). Per framework: outputs equal the
library's own predict on its tricky models; the model is served from a root renamed after the
service opened it (so a loader that opens the model by name, in Python or in C, fails); a file
swapped for a link to a model outside the roots at expansion, after expansion before the run,
and for a model update never gives one prediction from outside; model updates (a good file
accepted, another signature refused); large_model, keyed models and blocks; every
framework-specific argument it takes changes what it does, every one it does not take is
refused with the frameworks that take it. TensorFlow's cases carry the ``tensorflow`` marker
(their own pytest process, see scripts/test.sh)."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import typing
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import pytest

from crossinfer import Inference, _config, _plan, _policy, _repository, _updates, frameworks
from crossinfer._errors import ModelLoadError
from tests._conformance_cases import BUILDERS, Case, Tricky
from tests.conftest import collect, collected


def _params() -> list[Any]:
    out = []
    for p in frameworks.REGISTRY:
        if BUILDERS.get(p.name) is None:
            continue
        marks = [pytest.mark.tensorflow] if p.name == "tensorflow" else []
        if p.extra and importlib.util.find_spec(p.extra) is None:
            marks.append(pytest.mark.skip(reason=f"the {p.extra} extra is not installed"))
        out.append(pytest.param(p.name, marks=marks, id=p.name))
    return out


FRAMEWORKS = _params()


@dataclasses.dataclass
class Built:
    framework: str
    case: Case
    root: Path  # the trusted model root the policy opened
    policy: _policy.Policy

    def kwargs(self, **more: Any) -> dict[str, Any]:
        return {"framework": self.framework, "model_uri": str(self.case.model),
                "passthrough_fields": ["id"], "postprocess": "raw", **self.case.kwargs, **more}


@pytest.fixture(scope="module")
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    cache: dict[str, Built] = {}

    def get(framework: str) -> Built:
        if framework not in cache:
            base = tmp_path_factory.mktemp(f"conformance-{framework}")
            root, outside = base / "repo", base / "outside"
            root.mkdir()
            outside.mkdir()
            case = BUILDERS[framework](root, outside)
            policy = _policy.Policy(repository=_repository.Repository(
                trusted_roots=[str(root)]))
            cache[framework] = Built(framework, case, root, policy)
        return cache[framework]
    return get


def _run(rows: list[Any], policy: _policy.Policy = _policy.DEFAULT, element_type: Any = None,
         before_run: Any = None, **kwargs: Any) -> tuple[list[Any], list[Any]]:
    """Inference over ``rows`` on the DirectRunner, built under ``policy``."""
    with beam.Pipeline() as p:
        rows_in = p | beam.Create(rows)
        if element_type is not None:
            rows_in = (p | "Impulse" >> beam.Impulse()
                       | beam.FlatMap(lambda _: rows).with_output_types(element_type))
        with _policy.applied(policy):
            out = rows_in | Inference(**kwargs)
        pred, fail = collect(out["predictions"], "pred"), collect(out["failures"], "fail")
        if before_run is not None:
            before_run()
    return collected(pred), collected(fail)


def _plan_for(b: Built, policy: _policy.Policy, **more: Any) -> Any:
    """The checked plan (its handler is what Beam gets) built under ``policy``."""
    element_type = (beam.Pipeline() | beam.Create(b.case.rows())).element_type
    return _plan.build(_config.parse(**b.kwargs(**more)), element_type, policy)


def _close(got: Any, want: Any) -> bool:
    return bool(np.allclose(np.asarray(got, dtype=np.float64),
                            np.asarray(want, dtype=np.float64), rtol=1e-4, atol=1e-5))


def _check_raw(b: Built, preds: list[Any], model: Path) -> None:
    want = b.case.predict(model, b.case.x)
    assert sorted(p.id for p in preds) == list(range(len(b.case.x)))
    for p in preds:
        assert _close(p.output, want[p.id]), (p.id, p.output, want[p.id])


def _from_outside(b: Built, preds: list[Any]) -> list[int]:
    """Rows whose prediction is the outside model's (and not the served one's)."""
    inside = b.case.predict(b.case.model, b.case.x)
    outside = b.case.predict(b.case.outside, b.case.x)
    return [p.id for p in preds
            if _close(p.output, outside[p.id]) and not _close(p.output, inside[p.id])]


def _swap_for_link(b: Built, path: Path) -> None:
    """``path`` becomes a symbolic link to the outside model (one rename: no gap)."""
    link = path.with_name(".swap-" + path.name)
    link.symlink_to(b.case.outside)
    os.replace(link, path)


@pytest.fixture()
def fresh(built: Any, tmp_path: Path) -> Any:
    """A copy of the framework's served model in its root, to swap without spoiling others."""
    def get(framework: str) -> tuple[Built, Path]:
        b = built(framework)
        copy = b.root / f"swap-{tmp_path.name}{b.case.model.suffix}"
        copy.write_bytes(b.case.model.read_bytes())
        return b, copy
    return get


# --- the registry ---------------------------------------------------------------------------

def test_every_registry_row_is_checked() -> None:
    missing = [n for n in frameworks.NAMES if n not in BUILDERS]
    assert not missing, (f"registry rows {missing} have no conformance builder: add one to "
                         "tests/_conformance_cases.py")


# --- outputs --------------------------------------------------------------------------------

@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_outputs_equal_the_librarys_own_predict(built: Any, framework: str) -> None:
    b = built(framework)
    preds, fails = _run(b.case.rows(), **b.kwargs())
    assert fails == []
    _check_raw(b, preds, b.case.model)
    tricky_dir = b.root / "tricky"
    tricky_dir.mkdir(exist_ok=True)
    wrong = {}
    for name, make in b.case.tricky.items():
        t: Tricky = make(tricky_dir)
        preds, fails = _run(t.rows, framework=framework, passthrough_fields=["id"], **t.kwargs)
        bad = [p.id for p in preds if (t.got(p) != t.want[p.id] if t.exact
                                       else not _close(t.got(p), t.want[p.id]))]
        if fails or bad or len(preds) != len(t.want):
            wrong[name] = (f"{len(bad)} of {len(t.want)} differ, {len(fails)} failed: "
                           f"{[f.error for f in fails[:2]]}")
    assert not wrong, wrong


# --- the core opens model files -------------------------------------------------------------

def test_no_framework_module_opens_a_path() -> None:
    """Statically: no framework module calls a file-opening function itself (the dynamic
    checks are the renamed root and the swaps below)."""
    import ast

    opening = {"open", "opened", "read_bytes", "read_text", "exists", "isfile", "listdir",
               "scandir", "walk", "load_model_from_path", "fdopen"}
    found = []
    for path in sorted((Path(frameworks.__file__).parent).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
                if name in opening:
                    found.append(f"{path.name}:{node.lineno} {name}()")
    assert not found, found


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_served_from_a_renamed_root(built: Any, framework: str, tmp_path: Path) -> None:
    """The root is renamed after the policy opened it: the model's name now leads nowhere, so
    any loader that opens a path by name (Python or native code) fails; the core's
    descriptor walk still reads the file, at expansion and on the workers."""
    b = built(framework)
    moved = b.root.with_name(b.root.name + "-moved")
    b.root.rename(moved)
    try:
        assert not b.case.model.exists()
        preds, fails = _run(b.case.rows(), b.policy, **b.kwargs())
    finally:
        moved.rename(b.root)
    assert fails == []
    _check_raw(b, preds, b.case.model)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_swap_to_a_link_at_expansion(fresh: Any, framework: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    b, path = fresh(framework)
    admit = _repository.Repository.admit

    def admit_then_swap(self: Any, uri: str, **kwargs: Any) -> str:
        checked = admit(self, uri, **kwargs)
        if uri == str(path) and not path.is_symlink():
            _swap_for_link(b, path)  # between the check and the load
        return checked

    monkeypatch.setattr(_repository.Repository, "admit", admit_then_swap)
    with pytest.raises(ModelLoadError, match="symbolic link"):
        _run(b.case.rows(), b.policy, **b.kwargs(model_uri=str(path)))
    assert path.is_symlink()


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_swap_to_a_link_after_expansion_before_the_run(fresh: Any, framework: str) -> None:
    b, path = fresh(framework)
    preds: list[Any] = []
    with pytest.raises(Exception, match="symbolic link") as caught:
        preds, _ = _run(b.case.rows(), b.policy, before_run=lambda: _swap_for_link(b, path),
                        **b.kwargs(model_uri=str(path)))
    assert path.is_symlink() and not _from_outside(b, preds), caught.value


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_swap_to_a_link_for_a_model_update(fresh: Any, framework: str) -> None:
    b, path = fresh(framework)
    handler = _plan_for(b, b.policy).handler
    handler.update_model_path(str(path))  # as RunInference does with a checked update
    assert handler.load_model() is not None
    _swap_for_link(b, path)
    with pytest.raises(ModelLoadError, match="symbolic link"):
        handler.load_model()


# --- model updates ----------------------------------------------------------------------------

@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_model_updates_accept_a_good_file_and_refuse_another_signature(
        built: Any, framework: str) -> None:
    b = built(framework)
    if "model_updates" not in frameworks.get(framework).takes:
        pytest.fail(f"{framework} does not take model_updates")
    config = _config.parse(**b.kwargs())
    plan = _plan_for(b, b.policy)
    checks = _updates.checks_for(config, plan.signature, b.policy)
    assert _updates.check_model(checks, str(b.case.other)).input_shape == \
        plan.signature.input_shape
    with pytest.raises(ModelLoadError) as refused:
        _updates.check_model(checks, str(b.case.narrow))
    assert "narrow" in str(refused.value) or "differs" in str(refused.value)


# --- sharing, keyed models, blocks ----------------------------------------------------------

@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_large_model(built: Any, framework: str) -> None:
    b = built(framework)
    preds, fails = _run(b.case.rows(), **b.kwargs(large_model=True))
    assert fails == []
    _check_raw(b, preds, b.case.model)
    plan = _plan_for(b, _policy.DEFAULT, model_copies=2)
    assert plan.handler.model_copies() == 2 and plan.handler.share_model_across_processes()


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_keyed_models(built: Any, framework: str) -> None:
    b = built(framework)
    rows = [beam.Row(id=r.id, key="ab"[r.id % 2], features=r.features) for r in b.case.rows()]
    kwargs = b.kwargs(models={"a": str(b.case.model), "b": str(b.case.other)},
                      model_key_field="key")
    del kwargs["model_uri"]
    preds, fails = _run(rows, b.policy, **kwargs)
    assert fails == [] and len(preds) == len(rows)
    want = {"a": b.case.predict(b.case.model, b.case.x),
            "b": b.case.predict(b.case.other, b.case.x)}
    for p in preds:
        key = "ab"[p.id % 2]
        assert _close(p.output, want[key][p.id]) and p.model_id.endswith(
            Path(b.case.model if key == "a" else b.case.other).name)


Block = typing.NamedTuple("Block", [("id", typing.Sequence[int]),
                                    ("features", typing.Sequence[typing.Sequence[float]])])


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_blocks(built: Any, framework: str) -> None:
    b = built(framework)
    if "blocks" not in frameworks.get(framework).takes:
        pytest.fail(f"{framework} does not take blocks")
    x = b.case.x
    blocks = [Block(list(range(0, 12)), x[:12].tolist()), Block(list(range(12, len(x))),
                                                               x[12:].tolist())]
    preds, fails = _run(blocks, element_type=Block, **b.kwargs(blocks=True))
    assert fails == [] and len(preds) == 2
    want = b.case.predict(b.case.model, x)
    got = {i: out for p in preds for i, out in zip(p.id, p.output)}
    assert sorted(got) == list(range(len(x)))
    assert all(_close(got[i], want[i]) for i in got)


# --- arguments --------------------------------------------------------------------------------

# A value of each framework-specific argument that a framework not taking it must refuse.
_VALUES: dict[str, Any] = {
    "pad_value": 0, "output_index": 0, "env_vars": {"CROSSINFER_X": "1"},
    "load_model_args": {"weights_only": True}, "inference_args": {"x": 1}, "blocks": True,
    "device": "GPU", "model_class": "tests.models:MLP", "model_params": {"n_features": 8},
    "handler": "tests.models:sklearn_handler", "model_file_type": "pickle",
    "model_updates": "/models/*.bin",
}
_ALL_TAKEN = sorted({a for p in frameworks.REGISTRY for a in p.takes})


def test_every_framework_specific_argument_has_a_value() -> None:
    assert set(_ALL_TAKEN) <= set(_VALUES), set(_ALL_TAKEN) - set(_VALUES)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_arguments_not_taken_are_refused_naming_who_takes_them(built: Any,
                                                               framework: str) -> None:
    b = built(framework)
    row = frameworks.get(framework)
    for argument in _ALL_TAKEN:
        if argument in row.takes:
            continue
        with pytest.raises(Exception) as caught:
            p = beam.Pipeline()
            _ = p | beam.Create(b.case.rows()) | Inference(
                **b.kwargs(**{argument: _VALUES[argument]}))
        message = str(caught.value)
        assert argument in message, (argument, message)
        assert all(f"'{n}'" in message for n in frameworks.taking(argument)), (argument,
                                                                               message)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_env_vars_are_set_before_the_model_loads(built: Any, framework: str) -> None:
    b = built(framework)
    if "env_vars" not in frameworks.get(framework).takes:
        pytest.fail(f"{framework} does not take env_vars")
    name = f"CROSSINFER_CONFORMANCE_{framework.upper()}"
    assert name not in os.environ
    try:
        preds, fails = _run(b.case.rows(), **b.kwargs(env_vars={name: "set"}))
        assert fails == [] and os.environ.get(name) == "set"
    finally:
        os.environ.pop(name, None)


# Arguments whose effect is proved by a test above (or a tricky model) rather than by a case's
# ``effects``; and those no conformance check proves yet, with why (the report's "n.a.").
_ELSEWHERE = {"model_updates": "test_model_updates_…", "blocks": "test_blocks",
              "env_vars": "test_env_vars_…", "output_index": "the multi-output tricky models"}
_UNCHECKED = {
    "pad_value": "padding never changes a masked model's output (the TF masking model)",
    "device": "no GPU on the test machines", "load_model_args": "test_tensorflow's Lambda test",
    "inference_args": "the ONNX/PyTorch test models take no call arguments",
    "model_class": "every PyTorch case names one", "handler": "framework='custom' only",
}


def test_every_taken_argument_is_accounted_for() -> None:
    for row in frameworks.REGISTRY:
        if BUILDERS.get(row.name) is None:
            continue
        unknown = [a for a in row.takes if a not in _ELSEWHERE and a not in _UNCHECKED
                   and a not in _EFFECTS.get(row.name, ())]
        assert not unknown, f"{row.name}: no check says what {unknown} change"


# The framework-specific arguments each case's ``effects`` prove (kept in step with the cases
# by test_arguments_taken_change_what_it_does).
_EFFECTS = {"xgboost": ("inference_args",), "sklearn": ("model_file_type",),
            "pytorch": ("model_params", "model_file_type"), "tensorflow": ("inference_args",),
            "onnx": ()}


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_arguments_taken_change_what_it_does(built: Any, framework: str) -> None:
    """For each argument with an effect in the framework's case: the outputs (or the build)
    differ from the run without it."""
    b = built(framework)
    assert tuple(b.case.effects) == _EFFECTS[framework]
    base, _ = _run(b.case.rows(), **b.kwargs())
    for argument, effect in b.case.effects.items():
        assert argument in frameworks.get(framework).takes, argument
        kwargs, changed = effect(b.root)
        try:
            preds, fails = _run(b.case.rows(), **b.kwargs(**kwargs))
            assert fails == [], fails[:2]
        except Exception:  # pylint: disable=broad-except
            preds = None
        assert changed(preds, base), f"{argument}={kwargs[argument]!r} changed nothing"


# --- remote workers ---------------------------------------------------------------------------

def test_a_remote_worker_reads_through_the_same_roots(tmp_path: Path) -> None:
    """A policy unpickled in another process (a remote worker) opens the same roots there and
    reads model files through them: a link is refused, never followed; a worker that cannot
    open the roots fails."""
    import pickle
    import subprocess
    import sys

    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "m.bin").write_bytes(b"inside")
    (outside / "m.bin").write_bytes(b"SECRET")
    (root / "link.bin").symlink_to(outside / "m.bin")
    policy = _policy.Policy(repository=_repository.Repository([str(root)]))
    (tmp_path / "policy.pickle").write_bytes(pickle.dumps(policy))
    code = ("import pickle, sys\n"
            "policy = pickle.loads(open(sys.argv[1], 'rb').read())\n"
            "print(policy.repository is not None, policy.read(sys.argv[2]))\n"
            "try:\n"
            "    policy.read(sys.argv[3])\n"
            "except Exception as e:\n"
            "    print(type(e).__name__, 'symbolic link' in str(e))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "policy.pickle"),
                           str(root / "m.bin"), str(root / "link.bin")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:2] == ["True b'inside'", "ModelLoadError True"]
    root.rename(tmp_path / "gone")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "policy.pickle"),
                           str(root / "m.bin"), str(root / "link.bin")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode != 0 and "cannot open the model roots" in done.stderr
