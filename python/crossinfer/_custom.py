"""framework="custom": any Beam ModelHandler, made by a named factory function."""

from __future__ import annotations

from typing import Optional

from apache_beam.ml.inference.base import ModelHandler

from crossinfer._callables import resolve
from crossinfer._config import Config
from crossinfer._errors import ConfigurationError
from crossinfer._handler import Framework
from crossinfer._loading import check_exists
from crossinfer._signature import Signature


def _no_threads(threads: int) -> None:
    """A custom handler manages its own thread pools."""


def loads_code(config: Config, model_uri: Optional[str]) -> bool:
    """What a custom handler does with its file is unknown: treat it as code."""
    return True


def describe(config: Config, model_uri: Optional[str]) -> Signature:
    """A custom handler's model is its own business: only that its file exists is checked."""
    if model_uri is not None:
        check_exists(model_uri)
    return Signature()


def build(config: Config, model_uri: Optional[str], signature: Signature) -> Framework:
    """Call ``factory(**model_params[, model_uri=...])``; it must return a ModelHandler.

    The handler receives the rows' model inputs as a list, exactly as Beam's RunInference
    would give them; its model is loaded on the workers (custom handlers may load lazily or
    call remote services, so it is not loaded here).
    """
    factory = resolve(config.handler, "handler")
    kwargs = dict(config.model_params)
    if model_uri is not None:
        kwargs["model_uri"] = model_uri
    try:
        handler = factory(**kwargs)
    except Exception as e:  # pylint: disable=broad-except
        raise ConfigurationError(
            f"handler={config.handler!r} raised {type(e).__name__}: {e} when called with "
            f"{sorted(kwargs)}") from e
    if not isinstance(handler, ModelHandler):
        raise ConfigurationError(
            f"handler={config.handler!r} returned {type(handler).__name__}, not a Beam "
            "ModelHandler")
    return Framework(handler=handler, spec=signature.input_spec(),
                     model_id=model_uri or config.handler, to_model=None, prepare=_no_threads)
