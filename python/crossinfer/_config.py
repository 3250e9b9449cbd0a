"""Checks the transform's plain-value arguments, without touching files or models.

Everything here is cheap and deterministic; loading models and resolving callables happen
later, in ``_plan``. Each error names the argument and what to do.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Optional

from crossinfer._arguments import ARGUMENTS, BY_NAME, FRAMEWORKS, MODEL_FILE_TYPES, check_rules
from crossinfer._errors import ConfigurationError
from crossinfer._version import check_client


def _kwargs(self: Any) -> dict[str, Any]:
    """Plain keyword arguments that ``parse`` turns back into this Config."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(self):
        v = getattr(self, f.name)
        if isinstance(v, (dict, tuple)) and not v:
            v = None  # parse turned an absent argument into an empty one: absent again
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def _model_uris(self: Any) -> dict[Optional[str], Optional[str]]:
    """Model key -> URI; a single model has the key ``None``."""
    if self.models is not None:
        return dict(self.models)
    return {None: self.model_uri}


# A checked value's type, by wire type (lists become tuples; absent values None).
_FIELD_TYPES = {"string": "Optional[str]", "int": "Optional[int]",
                "float": "Optional[float]", "bool": "bool",
                "list<string>": "Optional[tuple[str, ...]]",
                "list<int>": "Optional[tuple[int, ...]]",
                "map<string,string>": "Optional[dict[str, str]]",
                "map<string,any>": "Optional[dict[str, Any]]"}

# The checked arguments, one field per row of the argument table, in its order.
Config = dataclasses.make_dataclass(
    "Config", [(a.name, _FIELD_TYPES[a.type]) for a in ARGUMENTS],
    frozen=True, namespace={"kwargs": _kwargs, "model_uris": _model_uris,
                            "__module__": __name__})


def parse(**kw: Any) -> Config:
    """Validate the arguments of ``crossinfer.Inference`` and return them normalized.

    Each argument is checked against its entry in the argument table (``_arguments``), then
    the table's rules that tie arguments together; what no rule there can say follows.
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
    for name, what in (("models", "must map each model key to a model_uri string"),
                       ("feature_fields", "must name at least one field"),
                       ("output_schema", "must name at least one field"),
                       ("labels", "must name at least one class")):
        if v[name] is not None and not v[name]:
            raise ConfigurationError(f"{name} {what}")
    check_rules(v)
    if framework != "custom" and v["model_uri"] is None and v["models"] is None:
        raise ConfigurationError(f"framework={framework!r} needs model_uri (the model file)")
    sources = [n for n in ("feature_field", "feature_fields", "preprocess") if v[n] is not None]
    if len(sources) != 1:
        named = " and ".join(sources) if sources else "none of them"
        raise ConfigurationError(
            "name exactly one input source: feature_field (one array field), feature_fields "
            "(scalar fields stacked in order) or preprocess ('package.module:function'); "
            f"got {named}")
    low, high = v["min_batch_size"], v["max_batch_size"]
    if low is not None and high is not None and low > high:
        raise ConfigurationError(f"min_batch_size={low} is larger than max_batch_size={high}")
    if v["pad_value"] is not None and v["input_shape"] is not None and -1 not in v["input_shape"]:
        raise ConfigurationError(
            f"pad_value is for a variable-length input, but input_shape={list(v['input_shape'])} "
            "has no -1 axis")
    _check_model_args(v, framework)
    v["model_params"] = v["model_params"] or {}
    v["passthrough_fields"] = v["passthrough_fields"] or ()
    return Config(**v)


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Variables that change what a worker process loads or runs (its own or its children's code):
# a pipeline's settings must not reach them.
_ENV_REFUSED = re.compile(r"^(LD_|DYLD_|PYTHON|BEAM_)|^(PATH|HOME|SHELL|IFS|ENV|BASH_ENV)$",
                          re.IGNORECASE)
# What each framework's loader takes as load_model_args (plain values only).
_LOAD_MODEL_ARGS = {"pytorch": {"weights_only": bool},
                    "tensorflow": {"safe_mode": bool, "compile": bool}}


def _check_model_args(v: dict[str, Any], framework: str) -> None:
    """env_vars, load_model_args and model_file_type: what their values may hold."""
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
        known = _LOAD_MODEL_ARGS.get(framework, {})
        want = known.get(key)
        if want is None or not isinstance(value, want):
            raise ConfigurationError(
                f"load_model_args[{key!r}]={value!r} is not supported for {framework}; give "
                + " or ".join(f"{k} (true/false)" for k in known))
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
