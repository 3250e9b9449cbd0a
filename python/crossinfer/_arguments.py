"""Every argument of ``crossinfer.Inference``, described once.

The table below is the one place an argument is declared: its wire type, what values it
takes (scikit-learn's ``_parameter_constraints`` style), its default, which frameworks use it,
the Java ``with…`` method that sets it, and its documentation. ``_config.parse`` validates
from it, the README's argument table is rendered from it, and the Java wrapper's contract test
reads it as JSON: ``python -m crossinfer._arguments`` (``--markdown`` for the README table).
Cross-argument rules (exactly one input source, …) live in ``_config``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from crossinfer import frameworks as _frameworks
from crossinfer._errors import ConfigurationError

FRAMEWORKS = _frameworks.NAMES  # the registry's, in its order
_FACTORIES = "|".join(p.java for p in _frameworks.REGISTRY)  # Java factories, one per framework
BUILTIN_POSTPROCESS = ("argmax", "regression", "raw")
OUTPUT_KINDS = ("probabilities", "logits", "value", "named")
INPUT_DTYPES = ("float32", "float64", "int64", "int32", "bool")
MODEL_FILE_TYPES = {"sklearn": ("pickle", "joblib"),
                    "pytorch": ("state_dict", "safetensors", "torchscript")}
WIRE_TYPES = ("string", "int", "float", "bool", "list<string>", "list<int>",
              "map<string,string>", "map<string,any>")

MAX_BATCH = 1_000_000  # rows per model call; more is a mistake, not a tuning
MAX_COPIES = 64  # model copies per machine
MAX_DURATION_SECS = 3600.0
MAX_RANK = 8  # axes of one row's input
MAX_PLAIN_DEPTH = 8  # nesting of model_params / inference_args
MAX_OUTPUTS = 1000  # outputs of one model (output_index)
_CALLABLE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


def _fail(name: str, want: str, value: Any) -> ConfigurationError:
    return ConfigurationError(f"{name} must be {want}, got {value!r}")


# Constraints: each checks one argument's value and returns it normalized, or raises
# ConfigurationError naming the argument.

@dataclasses.dataclass(frozen=True)
class Text:
    """A non-empty string, optionally one of ``options`` (compared case-insensitively if
    ``upper``) or a 'package.module:function' name (``callable_ok``)."""

    options: tuple[str, ...] = ()
    callable_ok: bool = False
    upper: bool = False

    def check(self, name: str, value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise _fail(name, "a non-empty string", value)
        if self.upper:
            value = value.upper()
        if value in self.options or (not self.options and not self.callable_ok):
            return value
        if self.callable_ok and (":" in value or not self.options):
            if not _CALLABLE.match(value):
                raise ConfigurationError(
                    f"{name}={value!r} is not a callable name; give it as "
                    "'package.module:function' (a string, no code)")
            return value
        extra = " or a 'package.module:function' name" if self.callable_ok else ""
        raise ConfigurationError(
            f"{name}={value!r} is not supported; use one of {', '.join(self.options)}{extra}")

    def describe(self) -> str:
        if not self.options:
            return '`"pkg.module:name"`' if self.callable_ok else "non-empty string"
        return " \\| ".join(f"`{o!r}`".replace("'", '"') for o in self.options) + (
            " or `\"pkg.module:function\"`" if self.callable_ok else "")


@dataclasses.dataclass(frozen=True)
class Integer:
    low: int
    high: int

    def check(self, name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not (
                self.low <= value <= self.high):
            raise _fail(name, f"an integer in [{self.low}, {self.high}]", value)
        return int(value)

    def describe(self) -> str:
        return f"integer in [{self.low}, {self.high:,}]"


@dataclasses.dataclass(frozen=True)
class Number:
    """A finite number; ``positive`` excludes 0 and below, ``high`` caps it."""

    positive: bool = False
    high: float = math.inf

    def check(self, name: str, value: Any) -> float:
        ok = (not isinstance(value, bool) and isinstance(value, (int, float))
              and math.isfinite(value) and (not self.positive or value > 0)
              and value <= self.high)
        if not ok:
            want = "a positive number" if self.positive else "a finite number"
            if self.high < math.inf:
                want += f" at most {self.high:g}"
            raise _fail(name, want, value)
        return value

    def describe(self) -> str:
        return ("number in (0, " + f"{self.high:g}]") if self.positive else "finite number"


@dataclasses.dataclass(frozen=True)
class Flag:
    def check(self, name: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise _fail(name, "true or false", value)
        return value

    def describe(self) -> str:
        return "true \\| false"


@dataclasses.dataclass(frozen=True)
class Names:
    """A list of distinct non-empty strings (field names, or ``what``)."""

    what: str = "field names"
    example: str = "'id'"

    def check(self, name: str, value: Any) -> tuple[str, ...]:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ConfigurationError(
                f"{name} must be a list of {self.what}, e.g. {name}=[{self.example}]")
        names = tuple(value)
        if not all(isinstance(n, str) and n for n in names):
            raise ConfigurationError(f"{name} must hold non-empty strings, got {list(names)!r}")
        if len(set(names)) != len(names):
            raise ConfigurationError(f"{name} names a field twice: {list(names)!r}")
        return names

    def describe(self) -> str:
        return f"list of distinct {self.what}"


@dataclasses.dataclass(frozen=True)
class Shape:
    """One row's input shape: sizes >= 1, and at most one -1 (a sequence axis)."""

    def check(self, name: str, value: Any) -> tuple[int, ...]:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise _fail(name, "a list of axis sizes, e.g. [32] or [-1]", value)
        shape = tuple(value)
        if not 1 <= len(shape) <= MAX_RANK or not all(
                type(d) is int and (d >= 1 or d == -1) and d <= MAX_BATCH for d in shape):
            raise ConfigurationError(
                f"{name} must list 1 to {MAX_RANK} axis sizes per row (positive, or -1 for a "
                f"variable-length axis), without the batch axis; got {list(shape)!r}")
        if shape.count(-1) > 1:
            raise ConfigurationError(f"{name} may have one variable-length axis (-1), got "
                                     f"{list(shape)!r}")
        return shape

    def describe(self) -> str:
        return "list of axis sizes, -1 for a sequence axis"


def plain(value: Any, name: str, depth: int = 0) -> Any:
    """A JSON-like value (str, int, float, bool, None, list, dict of str keys), Java Rows
    turned into dicts; anything else is a ConfigurationError naming ``name``."""
    if depth > MAX_PLAIN_DEPTH:
        raise ConfigurationError(f"{name} is nested deeper than {MAX_PLAIN_DEPTH} levels")
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if hasattr(value, "_asdict"):  # a Java Row arrives as a NamedTuple
        value = value._asdict()
    elif hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise ConfigurationError(f"{name} keys must be strings")
        return {k: plain(v, f"{name}[{k!r}]", depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, f"{name}[{i}]", depth + 1) for i, v in enumerate(value)]
    raise ConfigurationError(
        f"{name} holds {type(value).__name__}; only plain values (strings, numbers, booleans, "
        "lists, dicts) can be arguments")


@dataclasses.dataclass(frozen=True)
class Dict:
    """A dict with string keys: of strings (``strings``) or of plain values."""

    strings: bool = False

    def check(self, name: str, value: Any) -> dict[str, Any]:
        if hasattr(value, "_asdict") or hasattr(value, "as_dict"):
            value = plain(value, name)
        if not isinstance(value, Mapping):
            raise ConfigurationError(
                f"{name} must be a dict (a Java Map), not {type(value).__name__}")
        out = plain(value, name)
        if self.strings and not all(isinstance(v, str) and v for v in out.values()):
            raise ConfigurationError(f"{name} must map names to non-empty strings")
        return out

    def describe(self) -> str:
        return "dict of strings" if self.strings else "dict of plain values"


@dataclasses.dataclass(frozen=True)
class Argument:
    name: str
    type: str  # wire type, one of WIRE_TYPES
    constraint: Any
    doc: str
    java: str  # the Java method that sets it
    frameworks: tuple[str, ...] = FRAMEWORKS
    default: Any = None

    def check(self, value: Any) -> Any:
        """``value`` normalized (the default when None), or ConfigurationError."""
        if value is None:
            return self.default
        return self.constraint.check(self.name, value)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "frameworks": list(self.frameworks),
                "doc": self.doc, "java": self.java, "default": self.default,
                "constraint": self.constraint.describe()}


ARGUMENTS: tuple[Argument, ...] = (
    Argument("framework", "string", Text(FRAMEWORKS),
             "the model's library", _FACTORIES),
    Argument("model_uri", "string", Text(),
             "the model file: a local path or any URI Beam's FileSystems reads (`gs://…`). "
             + "; ".join(f"{p.name}: {p.formats}" for p in _frameworks.REGISTRY),
             "withModelUri"),
    Argument("model_class", "string", Text(callable_ok=True),
             "pytorch state_dict: `\"pkg.module:Class\"`, the `torch.nn.Module` to load it into",
             "withModelClass", _frameworks.taking("model_class")),
    Argument("model_params", "map<string,any>", Dict(),
             "keyword arguments for `model_class` (pytorch) or the handler factory (custom)",
             "withModelParams", _frameworks.taking("model_params")),
    Argument("handler", "string", Text(callable_ok=True),
             "`\"pkg.module:factory\"`, called as `factory(**model_params, model_uri=...)`, "
             "returning a Beam `ModelHandler` that receives a list of model inputs",
             "custom", _frameworks.taking("handler")),
    Argument("feature_field", "string", Text(),
             "one array field holding the model input (fixed or variable length)",
             "withFeatureField"),
    Argument("feature_fields", "list<string>", Names(),
             "scalar numeric fields stacked in order into one vector", "withFeatureFields"),
    Argument("passthrough_fields", "list<string>", Names(),
             "input fields copied unchanged onto each prediction", "withPassthroughFields"),
    Argument("preprocess", "string", Text(callable_ok=True),
             "`\"pkg.module:function\"`: row -> model input", "withPreprocess"),
    Argument("postprocess", "string", Text(BUILTIN_POSTPROCESS, callable_ok=True),
             "`\"argmax\"` (`label`, `score`), `\"regression\"` (`value`), `\"raw\"` "
             "(`output: array<float64>`) or `\"pkg.module:function\"` taking Beam's "
             "`PredictionResult(example=<input row>, inference=<the model's output for the "
             "row>, model_id)` and returning a dict (sklearn: `predict_proba` for a classifier, "
             "`predict` with `output=\"value\"`)", "withPostprocess", default="argmax"),
    Argument("output_schema", "map<string,string>", Dict(strings=True),
             "with a custom postprocess: field -> type name (`int64`, `int32`, `float64`, "
             "`float32`, `string`, `bool`, `bytes`, `array<T>`, `optional<T>`, `map<K,V>`)",
             "withOutputSchema"),
    Argument("min_batch_size", "int", Integer(1, MAX_BATCH),
             "Beam's batching: fewest rows per model call", "withMinBatchSize"),
    Argument("max_batch_size", "int", Integer(1, MAX_BATCH),
             "Beam's batching: most rows per model call", "withMaxBatchSize"),
    Argument("max_batch_duration_secs", "float", Number(positive=True, high=MAX_DURATION_SECS),
             "longest wait for a batch (streaming-friendly batching)",
             "withMaxBatchDurationSecs"),
    Argument("large_model", "bool", Flag(),
             "one copy of the model per machine, shared by its worker processes",
             "withLargeModel", default=False),
    Argument("model_copies", "int", Integer(1, MAX_COPIES),
             "exactly this many copies of the model per machine, shared by its processes",
             "withModelCopies"),
    Argument("model_key_field", "string", Text(),
             "several models: the field whose value picks the model", "withModels"),
    Argument("models", "map<string,string>", Dict(strings=True),
             "several models: key -> model_uri (Beam's KeyedModelHandler)", "withModels"),
    Argument("device", "string", Text(("CPU", "GPU"), upper=True),
             "where the model runs", "withDevice", _frameworks.taking("device"),
             default="CPU"),
    Argument("blocks", "bool", Flag(),
             "each input element holds many rows column by column (see below)", "withBlocks",
             _frameworks.taking("blocks"), default=False),
    Argument("input_shape", "list<int>", Shape(),
             "one row's model input, stated instead of read off the model: `[32]` (fixed "
             "width), `[-1]` (a sequence), `[-1, 16]`", "withInputShape"),
    Argument("input_dtype", "string", Text(INPUT_DTYPES),
             "the model input's dtype, stated instead of read off the model",
             "withInputDtype"),
    Argument("pad_value", "float", Number(),
             "the value sequences are padded with (e.g. the tokenizer's pad id); stated "
             "instead of read off the model (`Embedding.padding_idx`)", "withPadValue",
             _frameworks.taking("pad_value")),
    Argument("output", "string", Text(OUTPUT_KINDS),
             "what the model returns per row: `\"probabilities\"`, `\"logits\"`, `\"value\"` "
             "(regression) or `\"named\"` (a dict of arrays, for a custom postprocess); read off "
             "the model where its metadata says, else needed by `argmax`", "withOutput"),
    Argument("inference_args", "map<string,any>", Dict(),
             "plain values passed to the model call on every batch (Beam's `inference_args`)",
             "withInferenceArgs", _frameworks.taking("inference_args")),
    Argument("labels", "list<string>", Names("class names", "'cat', 'dog'"),
             "with `\"argmax\"`: the name of each class, in the order of the model's outputs; "
             "adds `label_name: string` (added on its own for string classes: sklearn "
             "`classes_`, an ONNX classifier's labels)", "withLabels"),
    Argument("output_index", "int", Integer(0, MAX_OUTPUTS),
             "a model that returns several outputs (a tuple, several ONNX outputs): the one "
             "to use, by position; the others are then ignored at your request (or "
             "`output=\"named\"` passes them all to a custom postprocess, a tuple's by "
             "position `\"0\"`, `\"1\"`, …)", "withOutputIndex",
             _frameworks.taking("output_index")),
    Argument("env_vars", "map<string,string>", Dict(strings=True),
             "environment variables set on each worker before the model loads (Beam's "
             "`env_vars`); not set where the pipeline is built; not `LD_*`, `PYTHON*`, `PATH` "
             "and others that change which code runs", "withEnvVars",
             _frameworks.taking("env_vars")),
    Argument("load_model_args", "map<string,any>", Dict(),
             "pytorch state_dict: keyword arguments for `torch.load` (Beam's "
             "`load_model_args`): `weights_only` (default `true`; `false` runs the file's "
             "code, so the file must be trusted)", "withLoadModelArgs",
             _frameworks.taking("load_model_args")),
    Argument("model_file_type", "string",
             Text(tuple(t for types in MODEL_FILE_TYPES.values() for t in types)),
             "the model file's format, stated instead of read off its name: sklearn "
             "`\"pickle\"` or `\"joblib\"` (Beam's `ModelFileType`); pytorch "
             "`\"state_dict\"`, `\"safetensors\"` (both with `model_class`) or "
             "`\"torchscript\"`", "withModelFileType",
             _frameworks.taking("model_file_type")),
    Argument("max_models_per_worker_hint", "int", Integer(1, MAX_COPIES),
             "with `models`: at most this many models held in memory per worker at once "
             "(Beam's `max_models_per_worker_hint`; others are loaded when their rows come)",
             "withMaxModelsPerWorkerHint"),
    Argument("model_updates", "string", Text(),
             "swap the model while the job runs: a file pattern (`/models/*.onnx`, "
             "`gs://b/m/*.pkl`) polled every `model_update_interval_secs`; the newest file "
             "written since the job started that passes the first model's checks and has its "
             "signature replaces it, from the next window on (windowed input; see Model "
             "updates). Python also takes a PCollection of Beam's `ModelMetadata`",
             "withModelUpdates", _frameworks.taking("model_updates")),
    Argument("model_update_interval_secs", "float", Number(positive=True, high=86400.0),
             "how often `model_updates` is polled, and the length of the update windows "
             "(default 10)",
             "withModelUpdates", _frameworks.taking("model_updates")),
    Argument("client_version", "string", Text(),
             "the crossinfer version of the client that built the request; the Java library "
             "sends its own, and expansion fails when it differs from the service's",
             _FACTORIES),
)

BY_NAME: dict[str, Argument] = {a.name: a for a in ARGUMENTS}


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
