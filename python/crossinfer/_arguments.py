"""Every argument of ``crossinfer.Inference``, described once.

The table below is the one place an argument is declared: its wire type, what values it
takes (scikit-learn's ``_parameter_constraints`` style; the bounds of a number are its one
ceiling, which the expansion service also checks on a raw request), its default, which
frameworks use it, the rules that tie it to other arguments, the Java ``with…`` method that
sets it, and its documentation. From it follow ``Inference``'s signature, ``_config.Config``
and ``parse``, the expansion service's number caps, the README's argument table, and the Java
library's generated ``with…`` methods (``python -m crossinfer._javagen`` writes those and
README's tables). Its JSON, for the Java contract test: ``python -m crossinfer._arguments``
(``--markdown`` prints README's table).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import Any, Optional

from crossinfer import frameworks as _frameworks
from crossinfer._constraints import (  # noqa: F401 - MAX_RANK is the signature's too
    MAX_RANK, Dict, Flag, Integer, Names, Number, Shape, Text)
from crossinfer._rules import Rule, When, conflicts, excludes, needs

FRAMEWORKS = _frameworks.NAMES  # the registry's, in its order
_FACTORIES = "|".join(p.java for p in _frameworks.REGISTRY)  # Java factories, one per framework
BUILTIN_POSTPROCESS = ("argmax", "regression", "raw")
OUTPUT_KINDS = ("probabilities", "logits", "value", "named")
INPUT_DTYPES = ("float32", "float64", "int64", "int32", "bool", "string")
MODEL_FILE_TYPES = {"sklearn": ("pickle", "joblib"),
                    "pytorch": ("state_dict", "safetensors", "torchscript")}
WIRE_TYPES = ("string", "int", "float", "bool", "list<string>", "list<int>",
              "map<string,string>", "map<string,any>")

# Ceilings: more is a mistake, and each costs the expansion service's worker pool memory.
MAX_BATCH = 100_000  # rows per model call
MAX_COPIES = 8  # model copies per machine
MAX_DURATION_SECS = 3600.0
MAX_MODELS_HELD = 64  # models one worker holds at once
MAX_OUTPUTS = 1000  # outputs of one model (output_index)

CUSTOM_POSTPROCESS = When("postprocess", BUILTIN_POSTPROCESS, negate=True,
                          label="a custom postprocess")
NAMED_OUTPUT = When("output", ("named",))
MODELS = When("models", label="models / model_key_field")
# Python reads whole rows when one of these holds (a function of the row sees all of it);
# else only the fields the arguments with ``reads_fields`` name.
WHOLE_ROWS = (When("preprocess"), CUSTOM_POSTPROCESS)


@dataclasses.dataclass(frozen=True)
class Argument:
    name: str
    type: str  # wire type, one of WIRE_TYPES
    constraint: Any
    doc: str
    java: str  # the Java method(s) that set it
    frameworks: tuple[str, ...] = FRAMEWORKS
    default: Any = None
    rules: tuple[Rule, ...] = ()  # checked when it is given (or when a rule's own ``when``)
    positional: bool = False  # Inference takes it by position too
    limited: bool = False  # the service checks its bounds before building anything
    reads_fields: bool = False  # its value names input fields Python reads
    java_written: bool = False  # its Java method does more than send it: written by hand
    java_long: bool = False  # a float with a Java long overload too (sent as an int)
    java_doc: str = ""  # what only the Java method's documentation says
    python_type: str = ""  # Inference's annotation, when not the wire type's

    def check(self, value: Any) -> Any:
        """``value`` normalized (the default when None), or ConfigurationError."""
        if value is None:
            return self.default
        return self.constraint.check(self.name, value)

    def annotation(self) -> str:
        """``Inference``'s type hint for it (names resolved in ``crossinfer._transform``)."""
        hint = self.python_type or _HINTS[self.type]
        return hint if self.default is not None else f"Optional[{hint}]"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "frameworks": list(self.frameworks),
                "doc": self.doc, "java": self.java, "default": self.default,
                "constraint": self.constraint.describe()}


_HINTS = {"string": "str", "int": "int", "float": "Union[int, float]", "bool": "bool",
          "list<string>": "Sequence[str]", "list<int>": "Sequence[int]",
          "map<string,string>": "Mapping[str, str]", "map<string,any>": "Mapping[str, Any]"}

_NOT_CUSTOM = When("framework", ("custom",), negate=True)
_BOTH_KEYS = ("multi-model needs both model_key_field (the field whose value picks the model) "
              "and models (a dict key -> model_uri)")

ARGUMENTS: tuple[Argument, ...] = (
    Argument("framework", "string", Text(FRAMEWORKS),
             "the model's library", _FACTORIES, positional=True, rules=(
                 needs(When("handler"), "framework='custom' needs "
                       "handler='package.module:factory', a function that returns a Beam "
                       "ModelHandler", When("framework", ("custom",))),)),
    Argument("model_uri", "string", Text(),
             "the model file: a local path or any URI Beam's FileSystems reads (`gs://…`). "
             + "; ".join(f"{p.name}: {p.formats}" for p in _frameworks.REGISTRY),
             "withModelUri", positional=True, java_written=True, rules=(
                 conflicts(When("models"),
                           "give model_uri (one model) or models (several), not both"),)),
    Argument("model_class", "string", Text(callable_ok=True),
             "pytorch state_dict: `\"pkg.module:Class\"`, the `torch.nn.Module` to load it into",
             "withModelClass", _frameworks.taking("model_class")),
    Argument("model_params", "map<string,any>", Dict(),
             "keyword arguments for `model_class` (pytorch) or the handler factory (custom)",
             "withModelParams", _frameworks.taking("model_params"), rules=(
                 needs(When("model_class"), "model_params are keyword arguments for "
                       "model_class (pytorch) or for the custom handler factory; give "
                       "model_class too, or drop model_params",
                       When("model_params"), _NOT_CUSTOM),)),
    Argument("handler", "string", Text(callable_ok=True),
             "`\"pkg.module:factory\"`, called as `factory(**model_params, model_uri=...)`, "
             "returning a Beam `ModelHandler` that receives a list of model inputs",
             "custom", _frameworks.taking("handler")),
    Argument("feature_field", "string", Text(),
             "one array field holding the model input (fixed or variable length)",
             "withFeatureField", reads_fields=True,
             java_doc="Integer arrays stay int64 (token ids); floating arrays become float32."),
    Argument("feature_fields", "list<string>", Names(),
             "scalar numeric fields stacked in order into one vector", "withFeatureFields",
             reads_fields=True),
    Argument("passthrough_fields", "list<string>", Names(),
             "input fields copied unchanged onto each prediction", "withPassthroughFields",
             reads_fields=True),
    Argument("preprocess", "string", Text(callable_ok=True),
             "`\"pkg.module:function\"`: row -> model input", "withPreprocess",
             java_doc="The expansion service must admit it (`withAllow`); whole rows then "
                      "cross to Python."),
    Argument("postprocess", "string", Text(BUILTIN_POSTPROCESS, callable_ok=True),
             "`\"argmax\"` (`label`, `score`), `\"regression\"` (`value`), `\"raw\"` "
             "(`output: array<float64>`) or `\"pkg.module:function\"` taking Beam's "
             "`PredictionResult(example=<input row>, inference=<the model's output for the "
             "row>, model_id)` and returning a dict (sklearn: `predict_proba` for a classifier, "
             "`predict` with `output=\"value\"`)", "withPostprocess", default="argmax",
             java_doc="A function must be admitted by the expansion service (`withAllow`) "
                      "and needs `withOutputSchema`; whole rows then cross to Python.",
             rules=(needs(When("output_schema"),
                          "postprocess={postprocess!r} needs output_schema, a dict field -> "
                          "Beam type name (e.g. {{'label': 'string', 'score': 'float64'}}), so "
                          "the output is typed before the pipeline runs", CUSTOM_POSTPROCESS),)),
    Argument("output_schema", "map<string,string>", Dict(strings=True),
             "with a custom postprocess: field -> type name (`int64`, `int32`, `float64`, "
             "`float32`, `string`, `bool`, `bytes`, `array<T>`, `optional<T>`, `map<K,V>`)",
             "withOutputSchema", java_written=True, rules=(
                 needs(CUSTOM_POSTPROCESS, "output_schema is for a custom postprocess; "
                       "postprocess={postprocess!r} has fixed fields"),)),
    Argument("min_batch_size", "int", Integer(1, MAX_BATCH),
             "Beam's batching: fewest rows per model call", "withMinBatchSize", limited=True),
    Argument("max_batch_size", "int", Integer(1, MAX_BATCH),
             "Beam's batching: most rows per model call", "withMaxBatchSize", limited=True,
             java_doc="With `withBlocks`, the most rows of a block per model call."),
    Argument("max_batch_duration_secs", "float",
             Number(positive=True, high=MAX_DURATION_SECS, as_float=True),
             "longest wait for a batch (streaming-friendly batching)",
             "withMaxBatchDurationSecs", limited=True),
    Argument("large_model", "bool", Flag(),
             "one copy of the model per machine, shared by its worker processes",
             "withLargeModel", default=False),
    Argument("model_copies", "int", Integer(1, MAX_COPIES),
             "exactly this many copies of the model per machine, shared by its processes",
             "withModelCopies", limited=True, rules=(
                 conflicts(When("models"), "model_copies cannot be combined with models: "
                           "Beam's keyed model handler loads one copy of each model",
                           When("model_copies", (1,), negate=True)),)),
    Argument("model_key_field", "string", Text(),
             "several models: the field whose value picks the model", "withModels",
             reads_fields=True, rules=(needs(When("models"), _BOTH_KEYS),)),
    Argument("models", "map<string,string>", Dict(strings=True),
             "several models: key -> model_uri (Beam's KeyedModelHandler)", "withModels",
             rules=(needs(When("model_key_field"), _BOTH_KEYS),)),
    Argument("device", "string", Text(("CPU", "GPU"), upper=True),
             "where the model runs", "withDevice", _frameworks.taking("device"),
             default="CPU"),
    Argument("blocks", "bool", Flag(),
             "each input element holds many rows column by column (see Blocks)", "withBlocks",
             _frameworks.taking("blocks"), default=False,
             java_doc="Every passthrough field and the feature field then hold one value per "
                      "row; predictions come out as one block row per input block, failures "
                      "one row each.",
             rules=(  # the Java library groups rows into blocks only where none of these holds
                 excludes("blocks", When("framework", _frameworks.taking("blocks"),
                                         negate=True, label="a framework without blocks"),
                          "custom: its handler takes one input per row"),
                 excludes("blocks", When("preprocess"), "a function of one row",
                          "name the block's array in feature_field"),
                 excludes("blocks", CUSTOM_POSTPROCESS, "a function of one row",
                          f"use one of {', '.join(BUILTIN_POSTPROCESS)}"),
                 excludes("blocks", MODELS, "each row picks its model"),
                 excludes("blocks", When("min_batch_size"), "a block is scored as it comes; "
                          "max_batch_size caps the rows per model call"),
                 excludes("blocks", When("max_batch_duration_secs"),
                          "blocks are not batched further"))),
    Argument("input_shape", "list<int>", Shape(),
             "one row's model input, stated instead of read off the model: `[32]` (fixed "
             "width), `[-1]` (a sequence), `[-1, 16]`", "withInputShape"),
    Argument("input_dtype", "string", Text(INPUT_DTYPES),
             "the model input's dtype, stated instead of read off the model (`\"string\"`: "
             "an array of strings per row, for a TensorFlow model that starts with "
             "`StringLookup` / `TextVectorization`)",
             "withInputDtype"),
    Argument("pad_value", "float", Number(),
             "the value sequences are padded with (e.g. the tokenizer's pad id); stated "
             "instead of read off the model (`Embedding.padding_idx`)", "withPadValue",
             _frameworks.taking("pad_value"), java_long=True),
    Argument("output", "string", Text(OUTPUT_KINDS),
             "what the model returns per row: `\"probabilities\"`, `\"logits\"`, `\"value\"` "
             "(regression) or `\"named\"` (a dict of arrays, for a custom postprocess); read off "
             "the model where its metadata says, else needed by `argmax`", "withOutput", rules=(
                 needs(CUSTOM_POSTPROCESS, "output='named' (a dict of arrays per row) needs a "
                       "custom postprocess ('package.module:function' with output_schema) that "
                       "picks the fields", NAMED_OUTPUT),)),
    Argument("inference_args", "map<string,any>", Dict(),
             "plain values passed to the model call on every batch (Beam's `inference_args`)",
             "withInferenceArgs", _frameworks.taking("inference_args")),
    Argument("labels", "list<string>", Names("class names", "'cat', 'dog'"),
             "with `\"argmax\"`: the name of each class, in the order of the model's outputs; "
             "adds `label_name: string` (added on its own for string classes: sklearn "
             "`classes_`, an ONNX classifier's labels)", "withLabels", rules=(
                 needs(When("postprocess", ("argmax",)), "labels name the classes for "
                       "postprocess='argmax' (label_name), not postprocess={postprocess!r}; "
                       "drop labels, or use postprocess='argmax'"),)),
    Argument("output_index", "int", Integer(0, MAX_OUTPUTS),
             "a model that returns several outputs (a tuple, several ONNX outputs): the one "
             "to use, by position; the others are then ignored at your request (or "
             "`output=\"named\"` passes them all to a custom postprocess, a tuple's by "
             "position `\"0\"`, `\"1\"`, …)", "withOutputIndex",
             _frameworks.taking("output_index"), rules=(
                 conflicts(NAMED_OUTPUT, "output_index picks one of the model's outputs; "
                           "output='named' passes them all to the postprocess: give one of "
                           "them"),)),
    Argument("env_vars", "map<string,string>", Dict(strings=True),
             "environment variables set on each worker before the model loads (Beam's "
             "`env_vars`); not set where the pipeline is built; not `LD_*`, `PYTHON*`, `PATH` "
             "and others that change which code runs", "withEnvVars",
             _frameworks.taking("env_vars")),
    Argument("load_model_args", "map<string,any>", Dict(),
             "pytorch state_dict: keyword arguments for `torch.load` (Beam's "
             "`load_model_args`): `weights_only` (default `true`; `false` runs the file's "
             "code, so the file must be trusted); tensorflow Keras file: `safe_mode` (default "
             "`true`; `false` loads Lambda layers' code) and `compile`", "withLoadModelArgs",
             _frameworks.taking("load_model_args")),
    Argument("model_file_type", "string",
             Text(tuple(t for types in MODEL_FILE_TYPES.values() for t in types)),
             "the model file's format, stated instead of read off its name: sklearn "
             "`\"pickle\"` or `\"joblib\"` (Beam's `ModelFileType`); pytorch "
             "`\"state_dict\"`, `\"safetensors\"` (both with `model_class`) or "
             "`\"torchscript\"`", "withModelFileType",
             _frameworks.taking("model_file_type")),
    Argument("max_models_per_worker_hint", "int", Integer(1, MAX_MODELS_HELD),
             "with `models`: at most this many models held in memory per worker at once "
             "(Beam's `max_models_per_worker_hint`; others are loaded when their rows come)",
             "withMaxModelsPerWorkerHint", rules=(
                 needs(When("models"), "max_models_per_worker_hint limits how many of several "
                       "models a worker holds; give models and model_key_field, or drop it"),)),
    Argument("model_updates", "string", Text(),
             "swap the model while the job runs: a file pattern (`/models/*.onnx`, "
             "`gs://b/m/*.pkl`) listed as each window closes; the window is scored by the "
             "newest file landed since the job started and by the window's end that passes "
             "the first model's checks and has its signature, else the first model (fixed "
             "windows; see Model updates). Python also takes a PCollection of Beam's "
             "`ModelMetadata`",
             "withModelUpdates", _frameworks.taking("model_updates"),
             python_type="Union[str, beam.PCollection]", rules=(
                 conflicts(When("models"), "model_updates cannot be combined with models / "
                           "model_key_field: updates swap the one model of a transform; apply "
                           "one Inference per model, each with its own model_updates"),)),
    Argument("model_update_interval_secs", "float",
             Number(positive=True, high=86400.0, as_float=True),
             "accepted for compatibility; changes nothing (`model_updates` is listed as each "
             "window closes)",
             "withModelUpdates", _frameworks.taking("model_updates"), rules=(
                 needs(When("model_updates"), "model_update_interval_secs is how often "
                       "model_updates is polled; give model_updates (a file pattern) too, or "
                       "drop it"),)),
    Argument("client_version", "string", Text(),
             "the crossinfer version of the client that built the request; the Java library "
             "sends its own, and expansion fails when it differs from the service's",
             _FACTORIES),
)

BY_NAME: dict[str, Argument] = {a.name: a for a in ARGUMENTS}
# What blocks cannot be combined with: the Java library groups rows only where none holds.
BLOCKS_RULES: tuple[Rule, ...] = tuple(r for r in BY_NAME["blocks"].rules if r.why)


def check_rules(values: dict[str, Any]) -> None:
    """Every rule of the table, in its order, against the checked ``values``."""
    for a in ARGUMENTS:
        for rule in a.rules:
            rule.check(a.name, values)


def service_caps() -> dict[str, tuple[float, float]]:
    """The bounds the expansion service checks on a raw request, by argument."""
    return {a.name: a.constraint.bounds() for a in ARGUMENTS if a.limited}


def as_json() -> list[dict[str, Any]]:
    return [a.to_json() for a in ARGUMENTS]


def markdown() -> str:
    """The README's argument table."""
    lines = ["| argument | type | values | frameworks | Java | meaning |",
             "| --- | --- | --- | --- | --- | --- |"]
    for a in ARGUMENTS:
        frameworks = "all" if a.frameworks == FRAMEWORKS else ", ".join(a.frameworks)
        default = "" if a.default is None else f" (default `{json.dumps(a.default)}`)"
        java = " / ".join(f"`{m}`" for m in a.java.split("|"))
        lines.append(f"| `{a.name}` | {a.type.replace('<', '&lt;').replace('>', '&gt;')} | "
                     f"{a.constraint.describe()}{default} | {frameworks} | {java} | {a.doc} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv == ["--markdown"]:
        sys.stdout.write(markdown())
    else:
        json.dump(as_json(), sys.stdout, indent=1)
        sys.stdout.write("\n")


if __name__ == "__main__":
    main()
