"""Checks the transform's plain-value arguments, without touching files or models.

Everything here is cheap and deterministic; loading models and resolving callables happen
later, in ``_plan``. Each error names the argument and what to do.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Optional

from crossinfer._arguments import (
    ARGUMENTS, BUILTIN_POSTPROCESS, BY_NAME, FRAMEWORKS, MODEL_FILE_TYPES)
from crossinfer._errors import ConfigurationError
from crossinfer._version import check_client

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
    input_shape: Optional[tuple[int, ...]] = None
    input_dtype: Optional[str] = None
    pad_value: Optional[float] = None
    output: Optional[str] = None
    inference_args: Optional[dict[str, Any]] = None
    labels: Optional[tuple[str, ...]] = None
    output_index: Optional[int] = None
    env_vars: Optional[dict[str, str]] = None
    load_model_args: Optional[dict[str, Any]] = None
    model_file_type: Optional[str] = None
    max_models_per_worker_hint: Optional[int] = None
    model_updates: Optional[str] = None
    model_update_interval_secs: Optional[float] = None
    client_version: Optional[str] = None

    def kwargs(self) -> dict[str, Any]:
        """Plain keyword arguments that ``parse`` turns back into this Config."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, (dict, tuple)) and not v:
                v = None  # parse turned an absent argument into an empty one: absent again
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def model_uris(self) -> dict[Optional[str], Optional[str]]:
        """Model key -> URI; a single model has the key ``None``."""
        if self.models is not None:
            return dict(self.models)
        return {None: self.model_uri}


def parse(**kw: Any) -> Config:
    """Validate the arguments of ``crossinfer.Inference`` and return them normalized.

    Each argument is checked against its entry in the argument table (``_arguments``);
    the rules that tie arguments together follow.
    """
    unknown = sorted(set(kw) - set(BY_NAME))
    if unknown:
        raise ConfigurationError(f"unknown arguments {unknown}; see the argument table")
    if kw.get("framework") is None:
        raise ConfigurationError(f"framework is required: one of {', '.join(FRAMEWORKS)}")
    v = {a.name: a.check(kw.get(a.name)) for a in ARGUMENTS}
    check_client(v["client_version"])
    framework = v["framework"]
    for a in ARGUMENTS:
        if framework not in a.frameworks and v[a.name] != a.default:
            only = " or ".join(repr(f) for f in a.frameworks)
            raise ConfigurationError(
                f"{a.name} is only for framework={only}, not {framework!r}")

    model_uri, models, model_key_field = v["model_uri"], v["models"], v["model_key_field"]
    if models is not None and not models:
        raise ConfigurationError("models must map each model key to a model_uri string")
    if (models is None) != (model_key_field is None):
        raise ConfigurationError(
            "multi-model needs both model_key_field (the field whose value picks the model) "
            "and models (a dict key -> model_uri)")
    if models is not None and model_uri is not None:
        raise ConfigurationError("give model_uri (one model) or models (several), not both")

    if framework == "custom":
        if v["handler"] is None:
            raise ConfigurationError(
                "framework='custom' needs handler='package.module:factory', a function that "
                "returns a Beam ModelHandler")
    elif model_uri is None and models is None:
        raise ConfigurationError(f"framework={framework!r} needs model_uri (the model file)")

    model_params = v["model_params"] or {}
    if model_params and v["model_class"] is None and framework != "custom":
        raise ConfigurationError(
            "model_params are keyword arguments for model_class (pytorch) or for the custom "
            "handler factory; give model_class too, or drop model_params")

    feature_field, feature_fields, preprocess = (
        v["feature_field"], v["feature_fields"], v["preprocess"])
    sources = [n for n, x in (("feature_field", feature_field), ("feature_fields", feature_fields),
                              ("preprocess", preprocess)) if x is not None]
    if len(sources) != 1:
        named = " and ".join(sources) if sources else "none of them"
        raise ConfigurationError(
            "name exactly one input source: feature_field (one array field), feature_fields "
            f"(scalar fields stacked in order) or preprocess ('package.module:function'); got {named}")
    if feature_fields is not None and not feature_fields:
        raise ConfigurationError("feature_fields must name at least one field")

    postprocess, output_schema = v["postprocess"], v["output_schema"]
    if postprocess in BUILTIN_POSTPROCESS:
        if output_schema is not None:
            raise ConfigurationError(
                f"output_schema is for a custom postprocess; postprocess={postprocess!r} "
                "has fixed fields")
    else:
        if output_schema is None:
            raise ConfigurationError(
                f"postprocess={postprocess!r} needs output_schema, a dict field -> Beam type "
                "name (e.g. {'label': 'string', 'score': 'float64'}), so the output is typed "
                "before the pipeline runs")
        if not output_schema:
            raise ConfigurationError("output_schema must name at least one field")
    output = v["output"]
    if output == "named" and postprocess in BUILTIN_POSTPROCESS:
        raise ConfigurationError(
            "output='named' (a dict of arrays per row) needs a custom postprocess "
            "('package.module:function' with output_schema) that picks the fields")

    min_batch, max_batch = v["min_batch_size"], v["max_batch_size"]
    if min_batch is not None and max_batch is not None and min_batch > max_batch:
        raise ConfigurationError(
            f"min_batch_size={min_batch} is larger than max_batch_size={max_batch}")
    duration = v["max_batch_duration_secs"]
    copies = v["model_copies"]
    if copies is not None and models is not None and copies != 1:
        raise ConfigurationError(
            "model_copies cannot be combined with models: Beam's keyed model handler loads "
            "one copy of each model")
    if v["pad_value"] is not None and v["input_shape"] is not None and -1 not in v["input_shape"]:
        raise ConfigurationError(
            f"pad_value is for a variable-length input, but input_shape={list(v['input_shape'])} "
            "has no -1 axis")

    _check_model_args(v, framework, postprocess, models)
    _check_updates(v["model_updates"], v["model_update_interval_secs"], models)
    blocks = _blocks(v["blocks"], framework=framework, preprocess=preprocess,
                     postprocess=postprocess, models=models, min_batch=min_batch,
                     duration=duration)

    return Config(
        framework=framework, model_uri=model_uri, model_class=v["model_class"],
        model_params=model_params, handler=v["handler"], feature_field=feature_field,
        feature_fields=feature_fields, passthrough_fields=v["passthrough_fields"] or (),
        preprocess=preprocess, postprocess=postprocess, output_schema=output_schema,
        min_batch_size=min_batch, max_batch_size=max_batch,
        max_batch_duration_secs=None if duration is None else float(duration),
        large_model=v["large_model"], model_copies=copies, model_key_field=model_key_field,
        models=models, device=v["device"], blocks=blocks, input_shape=v["input_shape"],
        input_dtype=v["input_dtype"], pad_value=v["pad_value"], output=output,
        inference_args=v["inference_args"], labels=v["labels"],
        output_index=v["output_index"], env_vars=v["env_vars"],
        load_model_args=v["load_model_args"], model_file_type=v["model_file_type"],
        max_models_per_worker_hint=v["max_models_per_worker_hint"],
        client_version=v["client_version"], model_updates=v["model_updates"],
        model_update_interval_secs=None if v["model_update_interval_secs"] is None
        else float(v["model_update_interval_secs"]))


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Variables that change what a worker process loads or runs (its own or its children's code):
# a pipeline's settings must not reach them.
_ENV_REFUSED = re.compile(r"^(LD_|DYLD_|PYTHON|BEAM_)|^(PATH|HOME|SHELL|IFS|ENV|BASH_ENV)$",
                          re.IGNORECASE)
_LOAD_MODEL_ARGS = {"weights_only": bool}


def _check_model_args(v: dict[str, Any], framework: str, postprocess: str,
                      models: Any) -> None:
    """labels, output_index, env_vars, load_model_args, model_file_type and
    max_models_per_worker_hint against the rest."""
    if v["labels"] is not None:
        if postprocess != "argmax":
            raise ConfigurationError(
                f"labels name the classes for postprocess='argmax' (label_name), not "
                f"postprocess={postprocess!r}; drop labels, or use postprocess='argmax'")
        if not v["labels"]:
            raise ConfigurationError("labels must name at least one class")
    if v["output_index"] is not None and v["output"] == "named":
        raise ConfigurationError(
            "output_index picks one of the model's outputs; output='named' passes them all to "
            "the postprocess: give one of them")
    for name in v["env_vars"] or {}:
        if not _ENV_NAME.match(name):
            raise ConfigurationError(
                f"env_vars names {name!r}, which is not an environment variable name "
                "(letters, digits and _, not starting with a digit)")
        if _ENV_REFUSED.match(name):
            raise ConfigurationError(
                f"env_vars may not set {name!r}: it changes which code the worker loads or "
                "runs (LD_*, DYLD_*, PYTHON*, BEAM_*, PATH, HOME, SHELL, ENV, BASH_ENV, IFS); "
                "configure the worker's environment instead")
    for key, value in (v["load_model_args"] or {}).items():
        want = _LOAD_MODEL_ARGS.get(key)
        if want is None or not isinstance(value, want):
            raise ConfigurationError(
                f"load_model_args[{key!r}]={value!r} is not supported; give weights_only "
                "(true/false)")
    file_type = v["model_file_type"]
    if file_type is not None and file_type not in MODEL_FILE_TYPES.get(framework, ()):
        raise ConfigurationError(
            f"model_file_type={file_type!r} is not a {framework} format; use one of "
            f"{', '.join(MODEL_FILE_TYPES[framework])}")
    if framework == "pytorch":
        torchscript = file_type == "torchscript" or (
            file_type is None and v["model_class"] is None)
        if file_type is not None and torchscript != (v["model_class"] is None):
            raise ConfigurationError(
                f"model_file_type={file_type!r} " + (
                    "takes no model_class (a TorchScript file holds its module); drop "
                    "model_class" if torchscript else
                    "needs model_class='package.module:Class' to load the weights into"))
        if v["load_model_args"] and (torchscript or file_type == "safetensors"):
            raise ConfigurationError(
                "load_model_args are torch.load's arguments for a state_dict saved with "
                "torch.save; this model is " + ("TorchScript" if torchscript else
                                                "a safetensors file") + "; drop them")
    if v["max_models_per_worker_hint"] is not None and models is None:
        raise ConfigurationError(
            "max_models_per_worker_hint limits how many of several models a worker holds; "
            "give models and model_key_field, or drop it")


def _check_updates(pattern: Optional[str], interval: Any, models: Any) -> None:
    """model_updates: what it cannot be combined with (its files are checked in _updates)."""
    if interval is not None and pattern is None:
        raise ConfigurationError(
            "model_update_interval_secs is how often model_updates is polled; give "
            "model_updates (a file pattern) too, or drop it")
    if pattern is not None and models is not None:
        raise ConfigurationError(
            "model_updates cannot be combined with models / model_key_field: updates swap "
            "the one model of a transform; apply one Inference per model, each with its own "
            "model_updates")


def _blocks(blocks: Any, *, framework: str, preprocess: Optional[str], postprocess: str,
            models: Any, min_batch: Optional[int], duration: Any) -> bool:
    """blocks=True: each element holds many rows; what it cannot be combined with."""
    if not isinstance(blocks, bool):
        raise ConfigurationError(f"blocks must be true or false, got {blocks!r}")
    if not blocks:
        return False
    conflicts = [
        (framework not in BY_NAME["blocks"].frameworks,
         f"framework={framework!r} (use {' or '.join(BY_NAME['blocks'].frameworks)})"),
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
