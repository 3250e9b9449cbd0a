"""The model frameworks crossinfer runs, one module each, and the registry that lists them.

A framework is one module here (``_<name>.py``) that implements ``FrameworkModule`` plus one
``Framework`` row in ``REGISTRY``. The row is plain data, so everything that needs to know which
frameworks exist (the argument table, the model repository's code check, the model
inspectors' warm-up, the README, the Java contract test) reads it without importing any
framework's library; the module itself is imported only when its framework is used.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import TYPE_CHECKING, Any, Optional, Protocol

if TYPE_CHECKING:  # only for the protocol's annotations: no import cycle at run time
    from crossinfer._config import Config
    from crossinfer._handler import BuiltHandler
    from crossinfer._policy import Policy
    from crossinfer._signature import Signature

__all__ = ["FrameworkModule", "Framework", "REGISTRY", "NAMES", "get", "module",
           "taking"]


class FrameworkModule(Protocol):
    """What a framework module provides (its functions, at module level)."""

    def loads_code(self, config: "Config", model_uri: Optional[str]) -> bool:
        """True if loading this file can run code (it then needs a trusted model root)."""

    def describe(self, config: "Config", model_uri: Optional[str],
                 policy: "Policy") -> "Signature":
        """Open the model once and read its signature (checked by a probe batch); callables
        and files through ``policy``."""

    def build(self, config: "Config", model_uri: Optional[str], signature: "Signature",
              policy: "Policy") -> "BuiltHandler":
        """Beam's model handler for the model ``signature`` describes (it carries ``policy``
        to the workers where it opens files itself)."""


@dataclasses.dataclass(frozen=True)
class Framework:
    """One framework, as plain data."""

    name: str  # the value of the ``framework`` argument
    module: str  # the module implementing FrameworkModule
    formats: str  # the model files it reads, for the docs
    code_formats: str  # which of them run code when loaded ("" : none)
    java: str  # the Java factory, CrossInference.<java>(modelUri)
    takes: tuple[str, ...] = ()  # framework-specific arguments it honours
    extra: Optional[str] = None  # the pyproject extra that installs its library; None: core
    # Imported by the service's model inspectors before the first inspection (cheap imports
    # only); else by the first inspection that needs it. The service imports it on first use.
    warm: bool = True
    # The model's own metadata says what it returns (a classifier's predict_proba, an
    # objective): messages advise other postprocesses, not setting ``output``.
    output_from_model: bool = False
    opaque: bool = False  # a handler crossinfer cannot probe: ``output`` must be stated
    directories: bool = False  # a model may be a directory (copied privately to be loaded)

    def load(self) -> FrameworkModule:
        """The framework's module (imports its library)."""
        return importlib.import_module(self.module)


_STACKED = ("blocks", "inference_args")  # frameworks fed one stacked array per batch

REGISTRY: tuple[Framework, ...] = (
    Framework("sklearn", "crossinfer.frameworks._sklearn",
           "a pickle, or joblib for `.joblib`", "a pickle/joblib file", "sklearn",
           takes=("blocks", "env_vars", "model_file_type", "model_updates"),
           output_from_model=True),
    Framework("pytorch", "crossinfer.frameworks._pytorch",
           "a state_dict (`torch.save` or `.safetensors`) with `model_class`, or TorchScript "
           "without", "a TorchScript file", "pytorch",
           takes=("model_class", "model_params", "device", "pad_value", "output_index",
                  "env_vars", "load_model_args", "model_file_type", "model_updates")
           + _STACKED),
    Framework("onnx", "crossinfer.frameworks._onnx", "`.onnx`", "", "onnx",
           takes=("device", "pad_value", "output_index", "env_vars", "model_updates")
           + _STACKED),
    Framework("tensorflow", "crossinfer.frameworks._tensorflow",
           "a SavedModel directory, or a Keras `.keras` / `.h5` file",
           "a SavedModel or Keras file", "tensorflow",
           takes=("pad_value", "output_index", "env_vars", "load_model_args",
                  "model_updates") + _STACKED,
           extra="tensorflow", warm=False, directories=True),
    Framework("xgboost", "crossinfer.frameworks._xgboost",
           "XGBoost's JSON (`.json`) or UBJSON (`.ubj`) model", "", "xgboost",
           takes=_STACKED + ("env_vars", "model_updates"), extra="xgboost", warm=False,
           output_from_model=True),
    Framework("custom", "crossinfer.frameworks._custom", "passed to the factory",
           "a custom handler's file", "custom",
           takes=("model_params", "handler", "device", "pad_value", "inference_args"),
           opaque=True),
)

NAMES: tuple[str, ...] = tuple(p.name for p in REGISTRY)
_BY_NAME = {p.name: p for p in REGISTRY}


def get(name: str) -> Framework:
    """The registry row of framework ``name`` (KeyError if there is none)."""
    return _BY_NAME[name]


def module(name: str) -> Any:
    """The module of framework ``name``, imported on first use."""
    return get(name).load()


def taking(argument: str) -> tuple[str, ...]:
    """The frameworks that honour the framework-specific ``argument``."""
    return tuple(p.name for p in REGISTRY if argument in p.takes)


def markdown() -> str:
    """The README's table of frameworks: what each reads and supports, from its row (a
    function, so one command can regenerate every README table)."""
    lines = ["| `framework` | model files | runs code when loaded | framework-specific "
             "arguments it takes | Java | pip extra |",
             "| --- | --- | --- | --- | --- | --- |"]
    for p in REGISTRY:
        extra = f"`crossinfer[{p.extra}]`" if p.extra else "(installed with crossinfer)"
        takes = ", ".join(f"`{a}`" for a in sorted(p.takes)) or "none"
        formats = p.formats + (" (a directory is copied privately to be loaded)"
                               if p.directories else "")
        lines.append(f"| `{p.name}` | {formats} | {p.code_formats or 'no'} | {takes} | "
                     f"`CrossInference.{p.java}(…)` | {extra} |")
    return "\n".join(lines) + "\n"

