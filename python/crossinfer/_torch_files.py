"""What a PyTorch model file holds when it does not load as stated, said so the message names
the argument that fixes it (a whole pickled module, a state_dict without model_class, weights
that do not fit model_params). Read with ``weights_only=True``: nothing here runs the file."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Optional

import torch

from crossinfer._errors import ModelLoadError

if TYPE_CHECKING:
    from crossinfer._policy import Policy


def _holds_state_dict(uri: str, policy: "Policy") -> bool:
    """A file torch loads with weights_only=True into a dict (it runs no code)."""
    try:
        obj = torch.load(io.BytesIO(policy.read(uri)), weights_only=True,
                         map_location="cpu")
    except Exception:  # pylint: disable=broad-except
        return False
    return isinstance(obj, Mapping)


def _pickled_module(uri: str, policy: "Policy") -> bool:
    """A torch.save(module) file: a pickle that names the module's class (weights_only
    refuses it without running it)."""
    try:
        torch.load(io.BytesIO(policy.read(uri)), weights_only=True, map_location="cpu")
    except Exception as e:  # pylint: disable=broad-except
        return "Unsupported global" in str(e) or "GLOBAL" in str(e)
    return False


def diagnose(config: Any, uri: str, argument: str, error: ModelLoadError,
             policy: "Policy") -> ModelLoadError:
    """The error to raise for a file that did not load: a precise one where the file says
    why, else ``error`` itself."""
    cause = error.__cause__
    if config.model_class is None and _holds_state_dict(uri, policy):
        return state_dict_without_class(argument, uri)
    if _pickled_module(uri, policy):
        return _public(_PICKLED_MODULE.format(argument=argument, uri=uri))
    if config.model_class is not None and isinstance(cause, RuntimeError) and \
            "state_dict" in str(cause):
        detail = " ".join(str(cause).split())[:300]
        fits = (f"{argument}={uri!r} holds weights that do not fit "
                f"{config.model_class}(**model_params) with model_params="
                f"{config.model_params!r}")
        fix = ("set model_params to the values the model was built with (or model_class to "
               "the class it was saved from)")
        return _public(f"{fits}: {detail}; {fix}", f"{fits}; {fix}")
    return error


def state_dict_without_class(argument: str, uri: str) -> ModelLoadError:
    return _public(_STATE_DICT_WITHOUT_CLASS.format(argument=argument, uri=uri))


def _public(full: str, public: Optional[str] = None) -> ModelLoadError:
    error = ModelLoadError(full)
    error.public = public or full
    return error


_STATE_DICT_WITHOUT_CLASS = (
    "{argument}={uri!r} holds a state_dict (weights only), not TorchScript; give "
    "model_class='package.module:Class' (and model_params) to load it into")
_PICKLED_MODULE = (
    "{argument}={uri!r} holds a whole pickled module (torch.save(model)), which runs code "
    "when loaded; save model.state_dict() instead and give model_class='package.module:Class' "
    "(and model_params), or export TorchScript (torch.jit.script(model).save(path)) and give "
    "no model_class")


