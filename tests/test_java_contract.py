"""One contract: the Java `with…` methods and factories of io.crossinfer.CrossInference against
the Python argument table (`python -m crossinfer._arguments`). Same kwarg names, compatible wire
types, every kwarg reachable from Java, and no Java method sends a name Python does not know.

The Java side is found by reflection (io.crossinfer.ContractDump, in the library's test classes,
calls every public factory and `with…` method and records the kwargs each one sends)."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from functools import lru_cache

import pytest

from tests._java import LIBRARY_TEST_CLASSPATH, REPO, classpath, run_java

pytestmark = pytest.mark.java

TYPES = {"string", "int", "float", "bool", "list<string>", "list<int>", "map<string,string>",
         "map<string,any>"}


def _compatible(table_type: str, java_type: str) -> bool:
    # A Python float argument takes an int; a map of any values takes a map of strings.
    return (java_type == table_type
            or (table_type == "float" and java_type == "int")
            or (table_type == "map<string,any>" and java_type == "map<string,string>"))


def contract_problems(table: list[dict], methods: list[dict]) -> list[str]:
    """What does not match between the Python argument table and the Java methods."""
    problems = []
    by_name = {}
    for m in methods:
        by_name.setdefault(m["method"], []).append(m)
    sent: dict[str, set[str]] = {}
    for m in methods:
        for kwarg, wire in m["kwargs"].items():
            sent.setdefault(kwarg, set()).add(wire)
    names = set()
    for arg in table:
        name, kind = arg["name"], arg["type"]
        names.add(name)
        if kind not in TYPES:
            problems.append(f"{name}: the table's type {kind!r} is not a wire type")
        named = [n for n in re.findall(r"[A-Za-z_]\w*", arg.get("java") or "")]
        missing = [n for n in named if n not in by_name]
        if not named:
            problems.append(f"{name}: the table names no Java method")
        if missing:
            problems.append(f"{name}: the table's Java method(s) {missing} do not exist")
        if not any(name in m["kwargs"] for n in named if n in by_name for m in by_name[n]):
            problems.append(f"{name}: no Java method named for it ({arg.get('java')!r}) sends it")
        for wire in sorted(sent.get(name, ())):
            if not _compatible(kind, wire):
                problems.append(f"{name}: Java sends {wire}, Python takes {kind}")
    for kwarg in sorted(set(sent) - names):
        senders = sorted({m["method"] for m in methods if kwarg in m["kwargs"]})
        problems.append(f"{kwarg}: Java ({', '.join(senders)}) sends it, Python has no such "
                        "argument")
    return problems


@lru_cache(maxsize=1)
def _java_methods() -> list[dict]:
    done = run_java(classpath(LIBRARY_TEST_CLASSPATH), "io.crossinfer.ContractDump", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def _python_table() -> list[dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "python"), str(REPO)])}
    done = subprocess.run([sys.executable, "-m", "crossinfer._arguments"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 0, ("`python -m crossinfer._arguments` must print the argument "
                                  "table as JSON:\n" + done.stderr[-2000:])
    return json.loads(done.stdout)


# The documented format, written by hand: what the checker is checked against.
_ALL = ["sklearn", "pytorch", "onnx", "custom"]
HAND_MADE = [{"name": n, "type": t, "frameworks": _ALL, "doc": "…", "java": j} for n, t, j in [
    ("framework", "string", "sklearn|pytorch|onnx|custom"),
    ("model_uri", "string", "withModelUri"),
    ("model_class", "string", "withModelClass"),
    ("model_params", "map<string,any>", "withModelParams"),
    ("handler", "string", "custom"),
    ("feature_field", "string", "withFeatureField"),
    ("feature_fields", "list<string>", "withFeatureFields"),
    ("passthrough_fields", "list<string>", "withPassthroughFields"),
    ("preprocess", "string", "withPreprocess"),
    ("postprocess", "string", "withPostprocess"),
    ("output_schema", "map<string,string>", "withOutputSchema"),
    ("min_batch_size", "int", "withMinBatchSize"),
    ("max_batch_size", "int", "withMaxBatchSize"),
    ("max_batch_duration_secs", "float", "withMaxBatchDurationSecs"),
    ("large_model", "bool", "withLargeModel"),
    ("model_copies", "int", "withModelCopies"),
    ("model_key_field", "string", "withModels"),
    ("models", "map<string,string>", "withModels"),
    ("device", "string", "withDevice"),
    ("blocks", "bool", "withBlocks"),
    ("input_shape", "list<int>", "withInputShape"),
    ("input_dtype", "string", "withInputDtype"),
    ("pad_value", "float", "withPadValue"),
    ("output", "string", "withOutput"),
    ("inference_args", "map<string,any>", "withInferenceArgs"),
    ("labels", "list<string>", "withLabels"),
    ("output_index", "int", "withOutputIndex"),
    ("env_vars", "map<string,string>", "withEnvVars"),
    ("load_model_args", "map<string,any>", "withLoadModelArgs"),
    ("model_file_type", "string", "withModelFileType"),
    ("max_models_per_worker_hint", "int", "withMaxModelsPerWorkerHint"),
    ("model_updates", "string", "withModelUpdates"),
    ("model_update_interval_secs", "float", "withModelUpdates"),
    ("client_version", "string", "sklearn|pytorch|onnx|custom"),
]]


def test_the_checker_on_a_hand_made_table():
    methods = _java_methods()
    # Arguments added since this list was written come from the Python table as they are.
    written = {a["name"] for a in HAND_MADE}
    table = HAND_MADE + [a for a in _python_table() if a["name"] not in written]
    assert contract_problems(table, methods) == []

    renamed = copy.deepcopy(table)
    renamed[2]["name"] = "model_cls"
    problems = contract_problems(renamed, methods)
    assert any(p.startswith("model_cls: no Java method") for p in problems)
    assert any(p.startswith("model_class: Java (withModelClass) sends it") for p in problems)

    retyped = copy.deepcopy(table)
    retyped[15]["type"] = "float"    # model_copies: a float takes an int, no problem
    retyped[14]["type"] = "string"   # large_model
    assert contract_problems(retyped, methods) == [
        "large_model: Java sends bool, Python takes string"]

    unreachable = copy.deepcopy(table)
    unreachable[3]["java"] = "withModelParameters"
    assert "model_params: the table's Java method(s) ['withModelParameters'] do not exist" in \
        contract_problems(unreachable, methods)

    new_kwarg = table + [{"name": "max_rows", "type": "int", "frameworks": _ALL,
                          "doc": "…", "java": "withMaxRows"}]
    assert "max_rows: no Java method named for it ('withMaxRows') sends it" in \
        contract_problems(new_kwarg, methods)


def test_java_methods_match_the_python_argument_table():
    problems = contract_problems(_python_table(), _java_methods())
    assert problems == [], "\n".join(problems)
