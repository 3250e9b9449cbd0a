"""scikit-learn: Beam's SklearnModelHandlerNumpy, fed one stacked float64 array per batch.

An estimator computes in float64, so rows keep their float64 values (no float32 round trip).
Which method the model output comes from is part of the signature: ``predict_proba`` for a
classifier (output "probabilities": argmax, raw and a custom postprocess all see the class
probabilities), ``predict`` for output "value" (a regressor, ``postprocess="regression"``, or
``output="value"`` to get a classifier's labels).
"""

from __future__ import annotations

import contextlib
import io
import pickle
from collections.abc import Iterator, Mapping
from typing import Any, Optional

import numpy as np
from apache_beam.ml.inference.sklearn_inference import ModelFileType, SklearnModelHandlerNumpy

from crossinfer import _probe
from crossinfer._config import Config
from crossinfer._errors import ConfigurationError
from crossinfer._handler import BuiltHandler
from crossinfer._loading import argument_for, load_once
from crossinfer._policy import Policy
from crossinfer._signature import Signature


class _Handler(SklearnModelHandlerNumpy):
    """Beam's handler, unpickling the bytes ``policy`` reads (never a path: in the service,
    the file its repository checked, by descriptor), at inspection, on the workers and for
    each model update."""

    def __init__(self, model_uri: str, file_type: ModelFileType, *, policy: Policy,
                 **kwargs: Any) -> None:
        super().__init__(model_uri, file_type, **kwargs)
        self._policy = policy
        self._uri, self._file_type = model_uri, file_type  # (Beam's own copies are private)

    def update_model_path(self, model_path: Optional[str] = None) -> None:
        super().update_model_path(model_path)
        if model_path:
            self._uri = model_path

    def load_model(self) -> Any:
        data = io.BytesIO(self._policy.read(self._uri))
        if self._file_type == ModelFileType.JOBLIB:
            import joblib

            return joblib.load(data)
        return pickle.load(data)


def _predict(model: Any, batch: np.ndarray, inference_args: Optional[dict] = None) -> Any:
    out = model.predict(batch, **(inference_args or {}))
    if isinstance(out, Mapping):  # output="named": one dict of arrays per row
        arrays = {str(k): np.asarray(v) for k, v in out.items()}
        return [{k: v[i] for k, v in arrays.items()} for i in range(len(batch))]
    return np.asarray(out)


def _predict_named(model: Any, batch: np.ndarray) -> Any:
    """The probe's view of predict: a dict of arrays stays one."""
    out = model.predict(batch)
    if isinstance(out, Mapping):
        return {str(k): np.asarray(v) for k, v in out.items()}
    return np.asarray(out)


def _predict_proba(model: Any, batch: np.ndarray, inference_args: Optional[dict] = None) -> Any:
    return np.asarray(model.predict_proba(batch, **(inference_args or {})))


_CONTROLLER: list[Any] = []


@contextlib.contextmanager
def _limit_threads(threads: int) -> Iterator[None]:
    """Cap BLAS/OpenMP pools (threadpoolctl, sklearn's own dependency); restored on exit."""
    import threadpoolctl

    if not _CONTROLLER:  # finding the loaded libraries is the slow part: once per process
        _CONTROLLER.append(threadpoolctl.ThreadpoolController())
    with _CONTROLLER[0].limit(limits=threads):
        yield


def _file_type(config: Config, uri: str) -> ModelFileType:
    """model_file_type when stated, else the file's name: joblib for .joblib/.jl."""
    if config.model_file_type is not None:
        return ModelFileType.JOBLIB if config.model_file_type == "joblib" else \
            ModelFileType.PICKLE
    return ModelFileType.JOBLIB if uri.endswith((".joblib", ".jl")) else ModelFileType.PICKLE


def loads_code(config: Config, model_uri: str) -> bool:
    """Pickle and joblib files run whatever they hold when loaded."""
    return True


def _allow_nan(model: Any) -> bool:
    try:
        return bool(model.__sklearn_tags__().input_tags.allow_nan)
    except Exception:  # pylint: disable=broad-except
        return False  # most estimators reject NaN


def describe(config: Config, model_uri: str, policy: Policy) -> Signature:
    """Load the estimator once; read n_features_in_, classes_ and predict_proba; probe it."""
    probe = _Handler(model_uri, _file_type(config, model_uri), policy=policy)
    model = load_once(probe.load_model, model_uri, "sklearn", argument_for(config, model_uri),
                      policy=policy)
    name = type(model).__name__
    d = _probe.Declared(input_dtype="float64", allow_nan=_allow_nan(model))
    d.sources["input_dtype"] = "scikit-learn computes in float64"
    d.sources["allow_nan"] = f"{name}'s allow_nan tag"
    width = getattr(model, "n_features_in_", None)
    if width is not None:
        d.input_shape = (int(width),)
        d.sources["input_shape"] = f"{name}.n_features_in_ = {int(width)}"
    else:
        d.sources["input_shape"] = f"{name} has no n_features_in_"
    has_proba = hasattr(model, "predict_proba")
    if config.output == "logits":
        raise ConfigurationError(
            "output='logits' is not an output of a scikit-learn estimator; use "
            "'probabilities' (predict_proba), 'value' (predict) or 'named' (a predict that "
            "returns a dict of arrays)")
    if config.output == "probabilities" and not has_proba:
        raise ConfigurationError(f"output='probabilities', but {name} has no predict_proba")
    if config.output is None:
        if has_proba and config.postprocess != "regression":
            d.output, d.sources["output"] = "probabilities", f"{name}.predict_proba"
        else:
            why = "postprocess='regression'" if has_proba else f"{name} has no predict_proba"
            d.output, d.sources["output"] = "value", f"{name}.predict ({why})"
    classes = getattr(model, "classes_", None)
    if classes is not None and np.asarray(classes).dtype.kind in "iu":
        d.labels = tuple(int(c) for c in classes)
    elif classes is not None and np.asarray(classes).dtype.kind in "OUS":
        d.label_names = tuple(str(c) for c in classes)
        d.sources["labels"] = f"{name}.classes_"
    output = config.output or d.output
    run = (lambda b: _predict_proba(model, b)) if output == "probabilities" else (
        lambda b: _predict_named(model, b))
    return _probe.complete(config, d, run, f"{name} ({model_uri})")


def build(config: Config, model_uri: str, signature: Signature,
          policy: Policy) -> BuiltHandler:
    """Beam's handler for the estimator ``signature`` describes."""
    predict = _predict_proba if signature.output == "probabilities" else _predict
    handler = _Handler(
        model_uri, _file_type(config, model_uri), policy=policy, inference_fn=predict,
        large_model=config.large_model, model_copies=config.model_copies,
        env_vars=dict(config.env_vars or {}))
    return BuiltHandler(
        predict=predict, handler=handler, spec=signature.input_spec(), model_id=model_uri,
        to_model=_identity, limit_threads=_limit_threads)


def _identity(batch: np.ndarray) -> np.ndarray:
    return batch
