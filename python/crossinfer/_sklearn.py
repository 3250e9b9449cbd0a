"""scikit-learn: Beam's SklearnModelHandlerNumpy, fed one stacked array per batch."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
from apache_beam.ml.inference.sklearn_inference import ModelFileType, SklearnModelHandlerNumpy

from crossinfer._config import Config
from crossinfer._errors import ConfigurationError
from crossinfer._handler import Framework
from crossinfer._loading import load_once
from crossinfer._signature import Signature


def _predict(model: Any, batch: np.ndarray, inference_args: Optional[dict] = None) -> Any:
    return np.asarray(model.predict(batch, **(inference_args or {})))


def _predict_proba(model: Any, batch: np.ndarray, inference_args: Optional[dict] = None) -> Any:
    return np.asarray(model.predict_proba(batch, **(inference_args or {})))


def _prepare(threads: int) -> None:
    import threadpoolctl  # sklearn's own dependency; caps BLAS/OpenMP pools process-wide

    threadpoolctl.threadpool_limits(threads)


def _file_type(uri: str) -> ModelFileType:
    return ModelFileType.JOBLIB if uri.endswith((".joblib", ".jl")) else ModelFileType.PICKLE


def loads_code(config: Config, model_uri: str) -> bool:
    """Pickle and joblib files run whatever they hold when loaded."""
    return True


def describe(config: Config, model_uri: str) -> Signature:
    """Load the estimator once to check it and learn its input width and classes."""
    probe = SklearnModelHandlerNumpy(model_uri, _file_type(model_uri))
    model = load_once(probe.load_model, model_uri, "sklearn")
    classes = getattr(model, "classes_", None)
    integral = classes is not None and np.asarray(classes).dtype.kind in "iu"
    width = getattr(model, "n_features_in_", None)
    return Signature(
        width=None if width is None else int(width), pad=False, dtype="float32",
        describe=f"{type(model).__name__}.n_features_in_",
        softmax=False, classes=tuple(int(c) for c in classes) if integral else None,
        predict_proba=hasattr(model, "predict_proba"))


def build(config: Config, model_uri: str, signature: Signature) -> Framework:
    """Beam's handler for the estimator ``signature`` describes."""
    if config.postprocess == "argmax" and not signature.predict_proba:
        raise ConfigurationError(
            f"postprocess='argmax' needs a classifier with predict_proba, but {model_uri!r} "
            "has none; use postprocess='regression' or 'raw'")
    wants_proba = config.postprocess in ("argmax", "raw") and signature.predict_proba
    predict = _predict_proba if wants_proba else _predict
    handler = SklearnModelHandlerNumpy(
        model_uri, _file_type(model_uri), inference_fn=predict,
        large_model=config.large_model, model_copies=config.model_copies)
    return Framework(
        predict=predict, handler=handler, spec=signature.input_spec(), model_id=model_uri,
        to_model=_identity, prepare=_prepare, softmax=signature.softmax,
        classes=signature.classes)


def _identity(batch: np.ndarray) -> np.ndarray:
    return batch
