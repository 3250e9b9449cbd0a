"""TensorFlow: Beam's TFModelHandlerNumpy, fed one stacked array per batch.

Two formats: a Keras file (``.keras``, or legacy ``.h5``), loaded by Beam's own loader
(``tf.keras.models.load_model``, with Keras's ``safe_mode``, not compiled), and a SavedModel
directory, called through its ``serving_default`` signature (Keras 3 no longer loads those).
The signature is read off the model: a Keras model's input spec (shape, dtype) and whether its
last layer is a softmax; a SavedModel's ``serving_default`` input and output specs. A sequence
axis (``None`` after the batch axis) is padded, checked by the probe like the other frameworks.

Both formats are code: a SavedModel's graph can hold ops that read and write files when it
runs, and a Keras file names the classes (and, outside safe mode, the lambdas) it is rebuilt
from. They load from trusted model roots only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Optional

import numpy as np
import tensorflow as tf
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.tensorflow_inference import TFModelHandlerNumpy

from crossinfer import _probe
from crossinfer._arguments import INPUT_DTYPES
from crossinfer._config import Config
from crossinfer._errors import ConfigurationError
from crossinfer._handler import Framework
from crossinfer._loading import load_once
from crossinfer._policy import Policy
from crossinfer._signature import Signature

_SIGNATURE = "serving_default"
_KERAS_ARGS = {"compile": False, "safe_mode": True}


def _is_saved_model(uri: str) -> bool:
    return FileSystems.exists(FileSystems.join(uri, "saved_model.pb"))


class _SavedModel:
    """A SavedModel's serving signature as a model with Keras's ``predict_on_batch``: the
    one method crossinfer calls (also through Beam's shared-model proxy)."""

    def __init__(self, uri: str) -> None:
        self._loaded = tf.saved_model.load(uri)  # kept: the signature needs its variables
        self._fn = self._loaded.signatures[_SIGNATURE]
        inputs = self._fn.structured_input_signature[1]
        self.input_specs = {k: inputs[k] for k in sorted(inputs)}
        outputs = self._fn.structured_outputs
        self.output_specs = {k: outputs[k] for k in sorted(outputs)}

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        (name,), (out,) = self.input_specs, self.output_specs
        return self._fn(**{name: tf.constant(batch)})[out].numpy()


class _Handler(TFModelHandlerNumpy):
    """Beam's handler; a SavedModel directory is loaded through its serving signature."""

    def __init__(self, model_uri: str, **kwargs: Any) -> None:
        super().__init__(model_uri, load_model_args=dict(_KERAS_ARGS), **kwargs)
        self._uri = model_uri

    def update_model_path(self, model_path: Optional[str] = None) -> None:
        super().update_model_path(model_path)
        self._uri = model_path or self._uri

    def load_model(self) -> Any:
        if _is_saved_model(self._uri):
            return _SavedModel(self._uri)
        return super().load_model()


@contextlib.contextmanager
def _limit_threads(threads: int) -> Iterator[None]:
    """TensorFlow's pools are sized once, before its runtime starts: set them if not yet."""
    with contextlib.suppress(RuntimeError):
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    yield


def _predict(model: Any, batch: np.ndarray, inference_args: Optional[dict] = None) -> Any:
    return np.asarray(model.predict_on_batch(batch))


def loads_code(config: Config, model_uri: str) -> bool:
    """SavedModel graphs and Keras files can read files or run code when loaded or called."""
    return True


def _specs(model: Any, what: str) -> tuple[Any, list[Any], str]:
    """(input spec, output specs, where they were read) of a Keras model or a SavedModel."""
    if isinstance(model, _SavedModel):
        inputs, outputs = list(model.input_specs.values()), list(model.output_specs.values())
        where = f"signature {_SIGNATURE!r}"
    else:
        inputs, outputs = list(model.inputs), list(model.outputs)
        where = "the Keras model's input"
    if len(inputs) != 1:
        raise ConfigurationError(
            f"{what} has {len(inputs)} inputs; crossinfer feeds one array per row: use "
            "framework='custom' with your own handler")
    if len(outputs) != 1:
        raise ConfigurationError(
            f"{what} has {len(outputs)} outputs; export one output, or use framework='custom'")
    return inputs[0], outputs, where


def describe(config: Config, model_uri: str, policy: Policy) -> Signature:
    """Load the model once; read its input spec and final activation; probe it."""
    probe = _Handler(model_uri)
    model = load_once(probe.load_model, model_uri, "tensorflow", policy=policy)
    what = f"the TensorFlow model ({model_uri})"
    if config.output == "named":
        raise ConfigurationError(f"output='named': {what} returns one array")
    spec, _, where = _specs(model, what)
    shape = [None if d is None else int(d) for d in spec.shape]
    dtype = tf.as_dtype(spec.dtype).name
    d = _probe.Declared(input_dtype=dtype if dtype in INPUT_DTYPES else None)
    d.sources["input_dtype"] = f"{where} is {dtype}"
    if not shape or shape[0] not in (None, -1):
        raise ConfigurationError(
            f"{what}'s input has shape {shape}: no batch axis; save it with a batch axis of "
            "any size (None)")
    rest = [-1 if s is None or s < 1 else s for s in shape[1:]]
    d.sources["input_shape"] = f"{where} has shape {shape}"
    if rest and rest.count(-1) <= 1:
        d.input_shape = tuple(rest)
    last = getattr(getattr(model, "layers", [None])[-1], "activation", None)
    if getattr(last, "__name__", "") == "softmax":
        d.output, d.sources["output"] = "probabilities", "the last layer's softmax activation"
    return _probe.complete(config, d, lambda b: _predict(model, b), what)


def build(config: Config, model_uri: str, signature: Signature, policy: Policy) -> Framework:
    """Beam's handler for the model ``signature`` describes."""
    handler = _Handler(model_uri, large_model=config.large_model,
                       model_copies=config.model_copies)
    return Framework(handler=handler, spec=signature.input_spec(), model_id=model_uri,
                     to_model=_identity, predict=_predict, limit_threads=_limit_threads)


def _identity(batch: np.ndarray) -> np.ndarray:
    return batch
