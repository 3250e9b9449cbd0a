"""TensorFlow: Beam's TFModelHandlerNumpy, fed one stacked array per batch.

Two formats: a Keras file (``.keras``, or legacy ``.h5``), loaded with
Keras 3's ``keras.models.load_model`` (Keras's ``safe_mode``, not compiled; ``load_model_args`` may
change both), and a SavedModel directory, called through its ``serving_default`` signature
(Keras 3 no longer loads those). Either is loaded from a private copy the core made through the
model repository's descriptors: this module never opens the name it was given. Several outputs
are served through ``output_index`` or ``output="named"``; an Embedding's size bounds the ids
the probe draws.
The signature is read off the model: a Keras model's input spec (shape, dtype) and whether its
last layer is a softmax; a SavedModel's ``serving_default`` input and output specs. A sequence
axis (``None`` after the batch axis) is padded, checked by the probe like the other frameworks.

Both formats are code: a SavedModel's graph can hold ops that read and write files when it
runs, and a Keras file names the classes (and, outside safe mode, the lambdas) it is rebuilt
from. They load from trusted model roots only.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping
from typing import Any, Optional

import numpy as np
import tensorflow as tf
from apache_beam.ml.inference.tensorflow_inference import TFModelHandlerNumpy

from crossinfer import _probe
from crossinfer._arguments import INPUT_DTYPES
from crossinfer._config import Config
from crossinfer._errors import ConfigurationError, ModelLoadError
from crossinfer._handler import BuiltHandler
from crossinfer._loading import argument_for, load_once
from crossinfer._policy import Policy
from crossinfer._signature import Signature

_SIGNATURE = "serving_default"
_KERAS_ARGS = {"compile": False, "safe_mode": True}


def _load_args(config: Config) -> dict[str, Any]:
    """Keras's load_model arguments, checked with the others (safe_mode=false loads a Lambda
    layer's code; the file is from a trusted root anyway)."""
    return dict(config.load_model_args or {})


class _SavedModel:
    """A SavedModel's serving signature as a model with Keras's ``predict_on_batch``: the
    one method crossinfer calls (also through Beam's shared-model proxy)."""

    def __init__(self, path: str) -> None:
        self._loaded = tf.saved_model.load(path)  # kept: variables live here
        self._fn = self._loaded.signatures[_SIGNATURE]
        inputs = self._fn.structured_input_signature[1]
        self.input_specs = {k: inputs[k] for k in sorted(inputs)}
        outputs = self._fn.structured_outputs
        self.output_specs = {k: outputs[k] for k in sorted(outputs)}
        self.output_names = list(self.output_specs)

    def predict_on_batch(self, batch: np.ndarray) -> Any:
        (name,) = self.input_specs
        out = self._fn(**{name: tf.constant(batch)})
        arrays = [out[k].numpy() for k in self.output_specs]
        return arrays[0] if len(arrays) == 1 else arrays

    def __call__(self, batch: np.ndarray, **kwargs: Any) -> Any:
        if kwargs:
            raise ConfigurationError("inference_args: a SavedModel's serving signature takes "
                                     "only its input")
        return self.predict_on_batch(batch)


def _load(path: str, load_args: Mapping[str, Any]) -> Any:
    """The model at ``path``: a private copy the core made, or with no repository the
    pipeline's own name (a directory: a SavedModel)."""
    if tf.saved_model.contains_saved_model(path):
        return _SavedModel(path)
    # Keras 3 by name, not tf.keras: a process that imported tf.Transform (crossinfer.Prepare)
    # has TF_USE_LEGACY_KERAS=1, which turns tf.keras into Keras 2, and Keras 2 cannot read a
    # Keras 3 file (Keras 3 still reads legacy .h5 files).
    import keras

    return keras.models.load_model(path, **{**_KERAS_ARGS, **load_args})


class _Handler(TFModelHandlerNumpy):
    """Beam's handler, loading from a private copy of the model the core made through the
    model repository (never the name it was given); a SavedModel directory is loaded through
    its serving signature; a model update replaces the file."""

    def __init__(self, model_uri: str, *, policy: Policy,
                 load_args: Optional[Mapping[str, Any]] = None, **kwargs: Any) -> None:
        super().__init__(model_uri, **kwargs)
        self._uri = model_uri
        self._policy = policy
        self._load_args = dict(load_args or {})

    def update_model_path(self, model_path: Optional[str] = None) -> None:
        super().update_model_path(model_path)
        self._uri = model_path or self._uri

    def load_model(self) -> Any:
        with self._policy.snapshot(self._uri) as path:
            return _load(path, self._load_args)


@contextlib.contextmanager
def _limit_threads(threads: int) -> Iterator[None]:
    """TensorFlow's pools are sized once, before its runtime starts: set them if not yet."""
    with contextlib.suppress(RuntimeError):
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    yield


def _call(model: Any, batch: np.ndarray, inference_args: Optional[dict],
          names: Optional[list[str]] = None) -> list[np.ndarray]:
    """Every output of the model on one batch, as numpy arrays (a dict's in ``names``'
    order)."""
    if inference_args:  # keyword arguments of the model's call (e.g. training=True)
        out = model(tf.constant(batch), **inference_args)
    else:
        out = model.predict_on_batch(batch)
    if isinstance(out, Mapping):
        out = [out[k] for k in sorted(out)]
    if not isinstance(out, (list, tuple)):
        out = [out]
    return [np.asarray(o) for o in out]


def _predict(names: Optional[tuple[str, ...]], index: Optional[int], model: Any,
             batch: np.ndarray, inference_args: Optional[dict] = None) -> Any:
    """One output (the only one, or ``index``), or with ``names`` one dict per row."""
    outs = _call(model, batch, inference_args, list(names or ()))
    if names is not None:
        return [{n: o[i] for n, o in zip(names, outs)} for i in range(len(batch))]
    return outs[index or 0]


def loads_code(config: Config, model_uri: str) -> bool:
    """SavedModel graphs and Keras files can read files or run code when loaded or called."""
    return True


def _specs(model: Any, config: Config, what: str) -> tuple[Any, list[str], str]:
    """(input spec, output names, where they were read) of a Keras model or a SavedModel;
    several outputs need output_index or output='named'."""
    if isinstance(model, _SavedModel):
        inputs, names = list(model.input_specs.values()), list(model.output_names)
        where = f"signature {_SIGNATURE!r}"
    else:
        inputs = list(model.inputs)
        struct = getattr(model, "output", None)
        if isinstance(struct, Mapping):  # dict outputs: by key, in _call's order
            names = sorted(str(k) for k in struct)
        else:
            names = [str(n) for n in getattr(model, "output_names", None) or
                     [f"output_{i}" for i in range(len(model.outputs))]]
        where = "the Keras model's input"
    if len(inputs) != 1:
        raise ConfigurationError(
            f"{what} has {len(inputs)} inputs; crossinfer feeds one array per row: use "
            "framework='custom' with your own handler")
    index = config.output_index
    if index is not None and index >= len(names):
        raise ConfigurationError(
            f"output_index={index}, but {what} has {len(names)} output(s) ({', '.join(names)})")
    if len(names) > 1 and index is None and config.output != "named":
        raise ConfigurationError(
            f"{what} has {len(names)} outputs ({', '.join(names)}); say which to use: "
            "output_index=0 (or another position), or output='named' with a custom "
            "postprocess that gets them all by name")
    return inputs[0], names, where


def _embedding_size(model: Any) -> Optional[int]:
    """The smallest Embedding's input_dim: integer inputs are ids below it."""
    sizes = [int(layer.input_dim) for layer in getattr(model, "layers", [])
             if type(layer).__name__ == "Embedding" and getattr(layer, "input_dim", None)]
    return min(sizes) if sizes else None


def _refused(e: ModelLoadError) -> ModelLoadError:
    """Keras's advice for a Lambda layer ('pass safe_mode=False') in crossinfer's words."""
    if "safe_mode" not in str(e):
        return e
    text = ("the Keras file holds a Lambda layer (Python code), which Keras loads only with "
            "safe_mode off: pass load_model_args={'safe_mode': False} (Java: "
            "withLoadModelArgs(Map.of(\"safe_mode\", false))); the file then runs its code, "
            "as files from a trusted model root may")
    error = ModelLoadError(f"{e}; {text}")
    error.public = f"{getattr(e, 'public', None) or e}; {text}"
    return error


def describe(config: Config, model_uri: str, policy: Policy) -> Signature:
    """Load the model once; read its input spec, outputs, embeddings and final activation;
    probe it."""
    load_args = _load_args(config)
    probe = _Handler(model_uri, policy=policy, load_args=load_args)
    try:
        model = load_once(probe.load_model, model_uri, "tensorflow",
                          argument_for(config, model_uri), policy=policy)
    except ModelLoadError as e:
        raise _refused(e) from None
    what = f"the TensorFlow model ({model_uri})"
    spec, names, where = _specs(model, config, what)
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
    size = _embedding_size(model)
    if size is not None:
        d.token_high = size
        d.sources["token_high"] = f"Embedding input_dim {size}: ids below {size}"
    named = config.output == "named"
    if named:
        d.output_names = tuple(names)
    elif len(names) > 1:
        d.output_index = config.output_index
    last = getattr(getattr(model, "layers", [None])[-1], "activation", None)
    if len(names) == 1 and getattr(last, "__name__", "") == "softmax":
        d.output, d.sources["output"] = "probabilities", "the last layer's softmax activation"

    def run(batch: np.ndarray) -> Any:
        outs = _call(model, batch, None, names)
        return dict(zip(names, outs)) if named else outs[config.output_index or 0]

    return _probe.complete(config, d, run, what)


def build(config: Config, model_uri: str, signature: Signature,
          policy: Policy) -> BuiltHandler:
    """Beam's handler for the model ``signature`` describes."""
    handler = _Handler(model_uri, policy=policy, load_args=_load_args(config),
                       large_model=config.large_model, model_copies=config.model_copies,
                       env_vars=dict(config.env_vars or {}))
    predict = functools.partial(_predict, signature.output_names, signature.output_index)
    return BuiltHandler(handler=handler, spec=signature.input_spec(), model_id=model_uri,
                     to_model=_identity, predict=predict, limit_threads=_limit_threads)


def _identity(batch: np.ndarray) -> np.ndarray:
    return batch
