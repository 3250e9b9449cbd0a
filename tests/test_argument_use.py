"""Every argument of the table is used: for each one, building ``Inference`` with a value other
than the base case's changes what is built (the plan: handler, input specs, postprocess, output
types; the pipeline's transforms) or fails. Removing the line that wires an argument makes its
case fail; an argument added to the table without a case here fails too.

Only construction runs (the model files are read, the plan is built, nothing is executed), so
all of it takes seconds. A snapshot holds plain values only (no object ids, no memory
addresses), and two builds of one configuration must give the same snapshot, or a difference
would prove nothing.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import re
import shutil
import types
from typing import Any, NamedTuple, Optional, Sequence

import apache_beam as beam
import numpy as np
import pytest

from crossinfer import Inference, _plan, _updates
from crossinfer._arguments import ARGUMENTS
from tests import models


class Features(NamedTuple):
    id: int
    key: str
    group: str
    features: Sequence[float]
    doubled: Sequence[float]
    tokens: Sequence[int]
    f0: float
    f1: float
    f2: float
    f3: float
    f4: float
    f5: float
    f6: float
    f7: float


_FIELDS = [f"f{i}" for i in range(models.N_FEATURES)]


@pytest.fixture(scope="module")
def files(tmp_path_factory, sklearn_model, mlp_model, sequence_model) -> dict[str, str]:
    d = tmp_path_factory.mktemp("argument_use")
    models.train_sklearn(d / "b.pkl", seed=1)  # a second model of the same shape
    (d / "updates").mkdir()
    shutil.copy(sklearn_model[0], d / "updates" / "first.pkl")  # model_updates needs one
    return {"sk": str(sklearn_model[0]), "sk2": str(d / "b.pkl"), "pt": str(mlp_model[0]),
            "seq": str(sequence_model[0]), "updates": str(d / "updates" / "*.pkl")}


def _bases(f: dict[str, str]) -> dict[str, dict[str, Any]]:
    sk = dict(framework="sklearn", model_uri=f["sk"], feature_field="features",
              passthrough_fields=["id"])
    return {
        "sklearn": sk,
        "pytorch": dict(sk, framework="pytorch", model_uri=f["pt"],
                        model_class="tests.models:MLP"),
        "sequence": dict(sk, framework="pytorch", model_uri=f["seq"], feature_field="tokens",
                         model_class="tests.models:MeanEmbedding"),
        "custom": dict(sk, framework="custom", handler="tests.models:sklearn_handler",
                       output="probabilities"),
        "fields": dict(sk, feature_field=None, feature_fields=_FIELDS),
        "preprocess": dict(sk, feature_field=None, preprocess="tests.models:scaled_features"),
        "custom postprocess": dict(sk, postprocess="tests.models:label_name",
                                   output_schema={"name": "string", "top": "float64"}),
        "models": dict(sk, model_uri=None, model_key_field="key",
                       models={"a": f["sk"], "b": f["sk2"]}),
        "updates": dict(sk, model_updates=f["updates"]),
    }


# argument -> (base, the arguments changed from it)
def _cases(f: dict[str, str]) -> dict[str, tuple[str, dict[str, Any]]]:
    return {
        "framework": ("sklearn", dict(framework="xgboost")),
        "model_uri": ("sklearn", dict(model_uri=f["sk2"])),
        "model_class": ("pytorch", dict(model_class="tests.models:ThreadRecordingMLP")),
        "model_params": ("pytorch", dict(model_params={"hidden": 16, "classes": 3})),
        "handler": ("custom", dict(handler="tests.models:hooked_sklearn_handler")),
        "feature_field": ("sklearn", dict(feature_field="doubled")),
        "feature_fields": ("fields", dict(feature_fields=_FIELDS[::-1])),
        "passthrough_fields": ("sklearn", dict(passthrough_fields=["id", "key"])),
        "preprocess": ("preprocess", dict(preprocess="tests.models:freeze_recording_features")),
        "postprocess": ("sklearn", dict(postprocess="raw")),
        "output_schema": ("custom postprocess", dict(output_schema={"name": "string",
                                                                    "top": "float32"})),
        "min_batch_size": ("sklearn", dict(min_batch_size=4)),
        "max_batch_size": ("sklearn", dict(max_batch_size=16)),
        "max_batch_duration_secs": ("sklearn", dict(max_batch_duration_secs=0.5)),
        "large_model": ("sklearn", dict(large_model=True)),
        "model_copies": ("sklearn", dict(model_copies=2)),
        "model_key_field": ("models", dict(model_key_field="group")),
        "models": ("models", dict(models={"a": f["sk2"], "b": f["sk"]})),
        "device": ("pytorch", dict(device="GPU")),
        "blocks": ("sklearn", dict(blocks=True)),
        "input_shape": ("pytorch", dict(input_shape=[-1])),
        "input_dtype": ("sklearn", dict(input_dtype="float64")),
        "pad_value": ("sequence", dict(pad_value=3)),
        "output": ("sklearn", dict(output="logits")),
        "inference_args": ("pytorch", dict(inference_args={"flag": 1})),
        "labels": ("sklearn", dict(labels=["low", "mid", "high"])),
        "output_index": ("pytorch", dict(output_index=0)),
        "env_vars": ("sklearn", dict(env_vars={"CROSSINFER_ARGUMENT_USE": "1"})),
        "load_model_args": ("pytorch", dict(load_model_args={"mmap": True})),
        "model_file_type": ("sklearn", dict(model_file_type="joblib")),
        "max_models_per_worker_hint": ("models", dict(max_models_per_worker_hint=1)),
        "model_updates": ("sklearn", dict(model_updates=f["updates"])),
        "model_update_interval_secs": ("updates", dict(model_update_interval_secs=2.5)),
        "client_version": ("sklearn", dict(client_version="0.0.0-other")),
    }


def _snapshot(obj: Any, depth: int = 8, seen: Optional[set] = None) -> Any:
    """``obj`` as plain values: its type and attributes, recursively; code as its name."""
    seen = set() if seen is None else seen
    if isinstance(obj, str):
        return _stable(obj)
    if obj is None or isinstance(obj, (bool, int, float)):
        return obj
    if isinstance(obj, bytes):
        return ("bytes", hashlib.sha256(obj).hexdigest())
    if isinstance(obj, np.ndarray):
        return ("array", obj.shape, str(obj.dtype), hashlib.sha256(obj.tobytes()).hexdigest())
    if isinstance(obj, enum.Enum):
        return repr(obj)
    if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, types.MethodType,
                        type, types.ModuleType, functools.partial)):
        return ("code", getattr(obj, "__module__", None),
                getattr(obj, "__qualname__", getattr(obj, "__name__", type(obj).__name__)))
    if isinstance(obj, (beam.Pipeline, beam.pvalue.PValue, Inference)):
        return type(obj).__name__  # the graph is read separately; Inference holds the kwargs
    if id(obj) in seen or depth == 0:
        return ("seen", type(obj).__qualname__)
    seen = seen | {id(obj)}
    if isinstance(obj, (list, tuple)):
        return [_snapshot(v, depth - 1, seen) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((_snapshot(v, depth - 1, seen) for v in obj), key=repr)
    if isinstance(obj, dict):
        return sorted(((repr(k), _snapshot(v, depth - 1, seen)) for k, v in obj.items()),
                      key=lambda kv: kv[0])
    state = getattr(obj, "__dict__", None)
    if state is None and hasattr(obj, "__slots__"):
        state = {s: getattr(obj, s, None) for s in obj.__slots__}
    if state is None:
        return ("object", type(obj).__module__, type(obj).__qualname__, _stable(repr(obj)))
    return (type(obj).__module__, type(obj).__qualname__,
            [(k, _snapshot(v, depth - 1, seen)) for k, v in sorted(state.items())
             if not k.startswith("__")])


def _stable(text: str) -> str:
    """Text without memory addresses and the random tags and keys Beam gives each build."""
    text = re.sub(r" at 0x[0-9a-f]+", "", text)
    return re.sub(r"\b[0-9a-f]{32}\b|\b[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}\b", "<id>", text)


def _fixed_now() -> float:
    return 1_800_000_000.0


def _built(kwargs: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    """What applying ``Inference(**kwargs)`` builds, as plain values; or its error."""
    plans = []
    build = _plan.build

    def recording(*args: Any, **kw: Any) -> _plan.Plan:
        plans.append(build(*args, **kw))
        return plans[-1]

    monkeypatch.setattr(_plan, "build", recording)
    # model_updates starts its ticks at the build's time: the same instant for every build.
    monkeypatch.setattr(_updates, "time", types.SimpleNamespace(time=_fixed_now))
    p = beam.Pipeline()
    # Windowed, as model_updates needs; the same for every case.
    rows = (p | beam.Create([]).with_output_types(Features)
            | beam.WindowInto(beam.window.FixedWindows(10)))
    try:
        out = rows | Inference(**kwargs)
    except Exception as e:  # noqa: BLE001 - a refusal is an outcome of the argument too
        return ("error", type(e).__name__, _stable(str(e)))
    finally:
        monkeypatch.undo()
    applied = []

    class Walk(beam.pipeline.PipelineVisitor):
        def visit_transform(self, node: Any) -> None:
            applied.append((node.full_label, _snapshot(node.transform)))

        def enter_composite_transform(self, node: Any) -> None:
            applied.append((node.full_label, _snapshot(node.transform)))

    p.visit(Walk())
    handler = plans[0].handler
    return {
        "outputs": {name: str(pc.element_type) for name, pc in sorted(out.items())},
        "plan": _snapshot(dataclasses.replace(plans[0])),
        "handler": [handler.batch_elements_kwargs(), handler.share_model_across_processes(),
                    handler.model_copies()],
        "transforms": applied,
    }


def test_every_argument_of_the_table_has_a_case(files):
    missing = [a.name for a in ARGUMENTS if a.name not in _cases(files)]
    assert missing == [], f"add a case to tests/test_argument_use.py for {missing}"


def test_a_build_is_the_same_twice(files, monkeypatch):
    for name, base in _bases(files).items():
        assert _built(base, monkeypatch) == _built(base, monkeypatch), name
        assert not (isinstance(_built(base, monkeypatch), tuple)), (
            name, _built(base, monkeypatch))  # each base builds


# Arguments kept only so that existing pipelines still build: each is documented as changing
# nothing, and it must indeed change nothing.
_NO_EFFECT = {
    # Java's withModelUpdates(pattern, interval) sends it; the pattern is listed as each window
    # closes, so there is no polling interval any more.
    "model_update_interval_secs",
}


@pytest.mark.parametrize("argument", [a.name for a in ARGUMENTS])
def test_the_argument_changes_what_is_built(argument, files, monkeypatch):
    base_name, change = _cases(files)[argument]
    assert argument in change
    base = _bases(files)[base_name]
    changed = {**base, **change}
    before, after = _built(base, monkeypatch), _built(changed, monkeypatch)
    if argument in _NO_EFFECT:
        doc = next(a.doc for a in ARGUMENTS if a.name == argument)
        assert "changes nothing" in doc, doc
        assert after == before, f"{argument} is documented as changing nothing, but does"
        return
    assert after != before, f"{argument}={change[argument]!r} built the same as {base_name}"
