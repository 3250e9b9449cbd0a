"""framework="custom": any Beam ModelHandler, made by a named factory function."""

from __future__ import annotations

from typing import Any, Callable, Optional

from apache_beam.ml.inference.base import ModelHandler

from crossinfer._config import Config
from crossinfer._errors import ConfigurationError
from crossinfer._features import InputSpec
from crossinfer._handler import Framework
from crossinfer._loading import check_exists


def _no_threads(threads: int) -> None:
    """A custom handler manages its own thread pools."""


def build(config: Config, model_uri: Optional[str], factory: Callable[..., Any]) -> Framework:
    """Call ``factory(**model_params[, model_uri=...])``; it must return a ModelHandler.

    The handler receives the rows' model inputs as a list, exactly as Beam's RunInference
    would give them; its model is loaded on the workers (custom handlers may load lazily or
    call remote services, so it is not loaded here).
    """
    kwargs = dict(config.model_params)
    if model_uri is not None:
        check_exists(model_uri)
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
    return Framework(handler=handler, spec=InputSpec(), model_id=model_uri or config.handler,
                     to_model=None, prepare=_no_threads)
