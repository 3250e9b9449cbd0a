"""XGBoost: Beam's XGBoostModelHandlerNumpy with a Booster, fed one stacked array per batch.

A model file is XGBoost's JSON or UBJSON: trees and parameters, no code, so it loads from any
model root. The signature comes from the booster: ``num_features`` is the row width, the
objective says what a prediction is: ``binary:logistic`` and ``multi:softprob`` are class
probabilities (a binary model's one probability p becomes the two columns [1 - p, p]),
``multi:softmax`` is read as its margins (logits; its ``predict`` gives only the label), any
other objective is a value. Missing values (NaN) are XGBoost's "missing", so rows may hold
NaN. A model trained with early stopping predicts with its best iteration's trees, as
``XGBClassifier.predict`` does (``iteration_range``, stated in the signature's sources).

The module never opens a path: the booster is loaded from the bytes the core read (through the
model repository's descriptor walk in the service), at inspection, on the workers and for each
model update.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Optional

import numpy as np
import xgboost
from apache_beam.ml.inference.xgboost_inference import XGBoostModelHandlerNumpy

from crossinfer import _probe
from crossinfer._config import Config
from crossinfer._errors import ConfigurationError
from crossinfer._handler import BuiltHandler, model_threads
from crossinfer._loading import argument_for, load_once
from crossinfer._policy import Policy
from crossinfer._signature import Signature

_PROBABILITIES = ("binary:logistic", "multi:softprob")
_LOGITS = ("multi:softmax",)


def _booster(data: bytes) -> Any:
    """A booster from the bytes of its JSON or UBJSON file (XGBoost tells them apart)."""
    booster = xgboost.Booster()
    booster.load_model(bytearray(data))
    return booster


class _Handler(XGBoostModelHandlerNumpy):
    """Beam's handler, loading the booster from the bytes ``policy`` reads (never by name);
    the booster's thread count is the loading process's; a model update replaces the file."""

    def __init__(self, model_uri: str, *, policy: Policy, **kwargs: Any) -> None:
        super().__init__(model_class=xgboost.Booster, model_state=model_uri, **kwargs)
        self._policy = policy

    def load_model(self) -> Any:
        model = _booster(self._policy.read(self._model_state))
        model.set_param({"nthread": model_threads()})
        return model

    def update_model_path(self, model_path: Optional[str] = None) -> None:
        self._model_state = model_path or self._model_state


def _trees(booster: Any) -> Optional[tuple[int, int]]:
    """The iteration range ``predict`` uses: up to the best iteration when early stopping
    recorded one (XGBoost's sklearn wrapper does the same), else None (all trees)."""
    best = booster.attr("best_iteration")
    if best is None or not best.isdigit():
        return None
    return (0, int(best) + 1)


def _predict(kind: str, model: Any, batch: np.ndarray,
             inference_args: Optional[dict] = None) -> np.ndarray:
    """One stacked batch through the booster (``inplace_predict``: no DMatrix copy)."""
    args = dict(inference_args or {})
    trees = _trees(model)
    if trees is not None:
        args.setdefault("iteration_range", trees)
    if kind == "logits":
        args.setdefault("predict_type", "margin")
    out = np.asarray(model.inplace_predict(batch, **args))
    if kind == "probabilities" and out.ndim == 1:  # binary:logistic: p of class 1
        return np.stack([1.0 - out, out], axis=1)
    return out


def _kind(objective: str, output: Optional[str]) -> str:
    if output == "value" or objective not in _PROBABILITIES + _LOGITS:
        return "value"
    return "logits" if objective in _LOGITS else "probabilities"


def loads_code(config: Config, model_uri: str) -> bool:
    """JSON/UBJSON holds trees and parameters: XGBoost parses it, nothing runs."""
    return False


def _objective(booster: Any) -> str:
    try:
        return str(json.loads(booster.save_config())["learner"]["objective"]["name"])
    except Exception:  # pylint: disable=broad-except
        return ""


def describe(config: Config, model_uri: str, policy: Policy) -> Signature:
    """Load the booster once; read num_features and the objective; probe it."""
    booster = load_once(lambda: _booster(policy.read(model_uri)), model_uri, "xgboost",
                        argument_for(config, model_uri), policy=policy)
    what = f"the XGBoost model ({model_uri})"
    objective = _objective(booster)
    if config.output not in (None, "value", _kind(objective, None)):
        raise ConfigurationError(
            f"output={config.output!r} is not what {what} returns (objective "
            f"{objective or 'unknown'!r}: {_kind(objective, None)}); leave output unset, or "
            "set 'value' for the booster's own prediction")
    d = _probe.Declared(input_dtype="float32", allow_nan=True)
    d.sources["input_dtype"] = "XGBoost computes in float32"
    d.sources["allow_nan"] = "XGBoost reads NaN as a missing value"
    width = int(booster.num_features())
    if width > 0:
        d.input_shape = (width,)
        d.sources["input_shape"] = f"Booster.num_features() = {width}"
    kind = _kind(objective, config.output)
    d.output = kind
    d.sources["output"] = f"objective {objective or 'unknown'!r}"
    trees = _trees(booster)
    if trees is not None:
        d.sources["iteration_range"] = (
            f"best_iteration {trees[1] - 1} of {booster.num_boosted_rounds()} rounds (early "
            f"stopping): predictions use iteration_range {trees}, as XGBoost's predict does")
    if config.output == "value" and kind == "value" and objective in _PROBABILITIES + _LOGITS:
        d.sources["output"] += " (output='value': the booster's predict)"
    return _probe.complete(config, d, lambda b: _predict(kind, booster, b), what)


def build(config: Config, model_uri: str, signature: Signature,
          policy: Policy) -> BuiltHandler:
    """Beam's handler for the booster ``signature`` describes."""
    kind = signature.output if signature.output in ("probabilities", "logits") else "value"
    handler = _Handler(model_uri, policy=policy, large_model=config.large_model,
                       model_copies=config.model_copies, env_vars=dict(config.env_vars or {}))
    return BuiltHandler(handler=handler, spec=signature.input_spec(), model_id=model_uri,
                     to_model=_identity, predict=functools.partial(_predict, kind))


def _identity(batch: np.ndarray) -> np.ndarray:
    return batch
