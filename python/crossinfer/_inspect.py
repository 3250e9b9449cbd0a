"""Where model files are opened at construction: in this process, or where a runner says.

A Python pipeline opens its own model files in its own process (``describe_here``). The
expansion service installs a runner (``set_runner``) that opens them somewhere its own process
is out of reach of what a model file does when loaded, and gets back only the plain-data
``Signature``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, Callable, Optional

from crossinfer._config import Config, parse
from crossinfer._signature import Signature

# (the transform's plain keyword arguments, model key) -> Signature.to_dict()
Runner = Callable[[Mapping[str, Any], Optional[str]], Mapping[str, Any]]

_runner: Optional[Runner] = None


def set_runner(runner: Optional[Runner]) -> None:
    """Open model files through ``runner`` from now on (``None``: in this process)."""
    global _runner
    _runner = runner


def framework_module(framework: str) -> Any:
    """The module that owns everything about ``framework`` (loading, signature, predict)."""
    return importlib.import_module(f"crossinfer._{framework}")


def describe(config: Config, key: Optional[str]) -> Signature:
    """The signature of the model ``key`` names (``None``: the only model)."""
    if _runner is None:
        return describe_here(config, key)
    return Signature.from_dict(_runner(config.kwargs(), key))


def describe_here(config: Config, key: Optional[str]) -> Signature:
    """Open the model in this process and read its signature."""
    uri = config.model_uris()[key]
    return framework_module(config.framework).describe(config, uri)


def describe_kwargs(kwargs: Mapping[str, Any], key: Optional[str]) -> dict[str, Any]:
    """``describe_here`` from plain arguments, as a runner's other side calls it."""
    return describe_here(parse(**kwargs), key).to_dict()
