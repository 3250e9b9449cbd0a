"""framework="custom": any Beam ModelHandler, made by a named factory function.

Its model is its own business: it is loaded on the workers only, so its signature is what the
arguments say (``input_shape``, ``input_dtype``, ``pad_value``, ``output``). Every hook of the
handler is honoured: its own preprocess and postprocess functions (``with_preprocess_fn``,
``with_postprocess_fn``) run on each model input and each result, its ``env_vars`` are set
before it loads. A PyTorch tensor handler gets tensors.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from crossinfer import _beam, _probe
from crossinfer._config import Config
from crossinfer._errors import ConfigurationError
from crossinfer._handler import BuiltHandler
from crossinfer._loading import check_exists
from crossinfer._policy import Policy
from crossinfer._signature import Signature


def loads_code(config: Config, model_uri: Optional[str]) -> bool:
    """What a custom handler does with its file is unknown: treat it as code."""
    return True


def describe(config: Config, model_uri: Optional[str], policy: Policy) -> Signature:
    """Only that the handler's file exists is checked; the rest is the arguments."""
    if model_uri is not None:
        check_exists(model_uri)
    return _probe.complete(config, _probe.Declared(), None, f"handler {config.handler!r}")


def _tensor(x: Any) -> Any:
    import torch

    return torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x


def _takes_tensors(handler: ModelHandler) -> bool:
    """Beam's PyTorch tensor handler (possibly inside Beam's pre/postprocessing wrappers)."""
    try:
        from apache_beam.ml.inference.pytorch_inference import PytorchModelHandlerTensor
    except ImportError:
        return False
    seen = 0
    while handler is not None and seen < 16:
        if isinstance(handler, PytorchModelHandlerTensor):
            return True
        handler, seen = _beam.wrapped_handler(handler), seen + 1
    return False


def build(config: Config, model_uri: Optional[str], signature: Signature,
          policy: Policy) -> BuiltHandler:
    """Call ``factory(**model_params[, model_uri=...])``; it must return a ModelHandler.

    The handler receives the rows' model inputs as a list, exactly as Beam's RunInference
    would give them; its model is loaded on the workers (custom handlers may load lazily or
    call remote services, so it is not loaded here).
    """
    factory = policy.resolve(config.handler, "handler")
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
    if handler.should_skip_batching():
        raise ConfigurationError(
            f"handler={config.handler!r} was made with with_no_batching(); crossinfer batches "
            "rows itself: return the handler without it")
    return BuiltHandler(handler=handler, spec=signature.input_spec(),
                     model_id=model_uri or config.handler, to_model=None,
                     each=_tensor if _takes_tensors(handler) else None)
