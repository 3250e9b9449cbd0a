"""Checks the transform's plain-value arguments, without touching files or models.

Everything here is cheap and deterministic; loading models and resolving callables happen
later, in ``_plan``. Each error names the argument and what to do.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from crossinfer._errors import ConfigurationError

FRAMEWORKS = ("sklearn", "pytorch", "onnx", "custom")
BUILTIN_POSTPROCESS = ("argmax", "regression", "raw")
DEVICES = ("CPU", "GPU")


@dataclasses.dataclass(frozen=True)
class Config:
    framework: str
    model_uri: Optional[str]
    model_class: Optional[str]
    model_params: dict[str, Any]
    handler: Optional[str]
    feature_field: Optional[str]
    feature_fields: Optional[tuple[str, ...]]
    passthrough_fields: tuple[str, ...]
    preprocess: Optional[str]
    postprocess: str
    output_schema: Optional[dict[str, str]]
    min_batch_size: Optional[int]
    max_batch_size: Optional[int]
    max_batch_duration_secs: Optional[float]
    large_model: bool
    model_copies: Optional[int]
    model_key_field: Optional[str]
    models: Optional[dict[str, str]]
    device: str
    blocks: bool = False

    def kwargs(self) -> dict[str, Any]:
        """Plain keyword arguments that ``parse`` turns back into this Config."""
        return {f.name: list(v) if isinstance(v, tuple) else v
                for f in dataclasses.fields(self) for v in [getattr(self, f.name)]}

    def model_uris(self) -> dict[str, Optional[str]]:
        """Model key -> URI; a single model has the key ``None``."""
        if self.models is not None:
            return dict(self.models)
        return {None: self.model_uri}


def _as_dict(value: Any, argument: str) -> dict[str, Any]:
    # A Java Row arrives as a NamedTuple; a Java Map as a dict.
    if value is None:
        return {}
    if hasattr(value, "_asdict"):
        value = value._asdict()
    elif hasattr(value, "as_dict"):
        value = value.as_dict()
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{argument} must be a dict (a Java Map), not {type(value).__name__}")
    if not all(isinstance(k, str) for k in value):
        raise ConfigurationError(f"{argument} keys must be strings")
    # Nested Java Maps arrive as nested Rows: make them dicts all the way down.
    return {k: _as_dict(v, f"{argument}[{k!r}]") if hasattr(v, "_asdict") else v
            for k, v in value.items()}


def _as_names(value: Any, argument: str) -> Optional[tuple[str, ...]]:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ConfigurationError(f"{argument} must be a list of field names, e.g. {argument}=['id']")
    names = tuple(value)
    if not all(isinstance(n, str) and n for n in names):
        raise ConfigurationError(f"{argument} must hold non-empty strings, got {list(names)!r}")
    if len(set(names)) != len(names):
        raise ConfigurationError(f"{argument} names a field twice: {list(names)!r}")
    return names


def _opt_str(value: Any, argument: str) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{argument} must be a non-empty string, got {value!r}")
    return value


def _opt_int(value: Any, argument: str, minimum: int = 1) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{argument} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def parse(**kw: Any) -> Config:
    """Validate the arguments of ``crossinfer.Inference`` and return them normalized."""
    framework = kw["framework"]
    if framework not in FRAMEWORKS:
        raise ConfigurationError(
            f"framework={framework!r} is not supported; use one of {', '.join(FRAMEWORKS)}")

    model_uri = _opt_str(kw["model_uri"], "model_uri")
    models = kw["models"]
    model_key_field = _opt_str(kw["model_key_field"], "model_key_field")
    if models is not None:
        models = _as_dict(models, "models")
        if not models or not all(isinstance(u, str) and u for u in models.values()):
            raise ConfigurationError("models must map each model key to a model_uri string")
    if (models is None) != (model_key_field is None):
        raise ConfigurationError(
            "multi-model needs both model_key_field (the field whose value picks the model) "
            "and models (a dict key -> model_uri)")
    if models is not None and model_uri is not None:
        raise ConfigurationError("give model_uri (one model) or models (several), not both")

    handler = _opt_str(kw["handler"], "handler")
    if framework == "custom":
        if handler is None:
            raise ConfigurationError(
                "framework='custom' needs handler='package.module:factory', a function that "
                "returns a Beam ModelHandler")
    else:
        if handler is not None:
            raise ConfigurationError(f"handler is only for framework='custom', not {framework!r}")
        if model_uri is None and models is None:
            raise ConfigurationError(f"framework={framework!r} needs model_uri (the model file)")

    model_class = _opt_str(kw["model_class"], "model_class")
    if model_class is not None and framework != "pytorch":
        raise ConfigurationError("model_class is only for framework='pytorch' (a state_dict)")
    model_params = _as_dict(kw["model_params"], "model_params")
    if model_params and model_class is None and framework != "custom":
        raise ConfigurationError(
            "model_params are keyword arguments for model_class (pytorch) or for the custom "
            "handler factory; give model_class too, or drop model_params")

    feature_field = _opt_str(kw["feature_field"], "feature_field")
    feature_fields = _as_names(kw["feature_fields"], "feature_fields")
    preprocess = _opt_str(kw["preprocess"], "preprocess")
    sources = [n for n, v in (("feature_field", feature_field), ("feature_fields", feature_fields),
                              ("preprocess", preprocess)) if v is not None]
    if len(sources) != 1:
        named = " and ".join(sources) if sources else "none of them"
        raise ConfigurationError(
            "name exactly one input source: feature_field (one array field), feature_fields "
            f"(scalar fields stacked in order) or preprocess ('package.module:function'); got {named}")
    if feature_fields is not None and not feature_fields:
        raise ConfigurationError("feature_fields must name at least one field")

    passthrough = _as_names(kw["passthrough_fields"], "passthrough_fields") or ()
    postprocess = _opt_str(kw["postprocess"], "postprocess") or "argmax"
    output_schema = kw["output_schema"]
    if postprocess in BUILTIN_POSTPROCESS:
        if output_schema is not None:
            raise ConfigurationError(
                f"output_schema is for a custom postprocess; postprocess={postprocess!r} "
                "has fixed fields")
    else:
        if ":" not in postprocess:
            raise ConfigurationError(
                f"postprocess={postprocess!r} is neither built in ({', '.join(BUILTIN_POSTPROCESS)}) "
                "nor a 'package.module:function' name")
        if output_schema is None:
            raise ConfigurationError(
                f"postprocess={postprocess!r} needs output_schema, a dict field -> Beam type "
                "name (e.g. {'label': 'string', 'score': 'float64'}), so the output is typed "
                "before the pipeline runs")
        output_schema = _as_dict(output_schema, "output_schema")
        if not output_schema:
            raise ConfigurationError("output_schema must name at least one field")

    min_batch = _opt_int(kw["min_batch_size"], "min_batch_size")
    max_batch = _opt_int(kw["max_batch_size"], "max_batch_size")
    if min_batch is not None and max_batch is not None and min_batch > max_batch:
        raise ConfigurationError(
            f"min_batch_size={min_batch} is larger than max_batch_size={max_batch}")
    duration = kw["max_batch_duration_secs"]
    if duration is not None:
        if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not (
                math.isfinite(duration) and duration > 0):
            raise ConfigurationError(
                f"max_batch_duration_secs must be a positive number of seconds, got {duration!r}")
    large_model = kw["large_model"]
    if not isinstance(large_model, bool):
        raise ConfigurationError(f"large_model must be true or false, got {large_model!r}")
    copies = _opt_int(kw["model_copies"], "model_copies")
    if copies is not None and models is not None and copies != 1:
        raise ConfigurationError(
            "model_copies cannot be combined with models: Beam's keyed model handler loads "
            "one copy of each model")

    device = kw["device"]
    if not isinstance(device, str) or device.upper() not in DEVICES:
        raise ConfigurationError(f"device={device!r} is not supported; use 'CPU' or 'GPU'")
    device = device.upper()
    if device == "GPU" and framework == "sklearn":
        raise ConfigurationError("device='GPU' is not supported for sklearn; use device='CPU'")

    blocks = _blocks(kw.get("blocks", False), framework=framework, preprocess=preprocess,
                     postprocess=postprocess, models=models, min_batch=min_batch,
                     duration=duration)

    return Config(
        framework=framework, model_uri=model_uri, model_class=model_class,
        model_params=model_params, handler=handler, feature_field=feature_field,
        feature_fields=feature_fields, passthrough_fields=passthrough, preprocess=preprocess,
        postprocess=postprocess, output_schema=output_schema, min_batch_size=min_batch,
        max_batch_size=max_batch,
        max_batch_duration_secs=None if duration is None else float(duration),
        large_model=large_model, model_copies=copies, model_key_field=model_key_field,
        models=models, device=device, blocks=blocks)


def _blocks(blocks: Any, *, framework: str, preprocess: Optional[str], postprocess: str,
            models: Any, min_batch: Optional[int], duration: Any) -> bool:
    """blocks=True: each element holds many rows; what it cannot be combined with."""
    if not isinstance(blocks, bool):
        raise ConfigurationError(f"blocks must be true or false, got {blocks!r}")
    if not blocks:
        return False
    conflicts = [
        (framework == "custom", "framework='custom' (use sklearn, pytorch or onnx)"),
        (preprocess is not None, "preprocess (name the block's array in feature_field)"),
        (postprocess not in BUILTIN_POSTPROCESS,
         f"a custom postprocess (use one of {', '.join(BUILTIN_POSTPROCESS)})"),
        (models is not None, "models / model_key_field (one model per transform)"),
        (min_batch is not None, "min_batch_size (a block is scored as it comes; "
                                "max_batch_size caps the rows per model call)"),
        (duration is not None, "max_batch_duration_secs (blocks are not batched further)"),
    ]
    for bad, what in conflicts:
        if bad:
            raise ConfigurationError(f"blocks=True cannot be combined with {what}")
    return True
