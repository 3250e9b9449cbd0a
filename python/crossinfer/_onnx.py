"""ONNX: Beam's OnnxModelHandlerNumpy with onnxruntime, one session thread by default."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import onnxruntime as ort
from apache_beam.ml.inference.onnx_inference import OnnxModelHandlerNumpy

from crossinfer._config import Config
from crossinfer._handler import Framework
from crossinfer._loading import load_once
from crossinfer._signature import Signature

_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64",
           "tensor(int64)": "int64", "tensor(int32)": "int32"}


def _infer(session: ort.InferenceSession, batch: np.ndarray,
           inference_args: Optional[dict] = None) -> Any:
    # The batch arrives stacked (and padded) already.
    feeds = {session.get_inputs()[0].name: batch, **(inference_args or {})}
    return session.run(None, feeds)[0]


class _OnnxHandler(OnnxModelHandlerNumpy):
    """Beam's handler; its SessionOptions are made at load time (they do not pickle)."""

    threads = 1

    def load_model(self) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        self._session_options = options
        try:
            return super().load_model()
        finally:
            self._session_options = None


def _identity(batch: np.ndarray) -> np.ndarray:
    return batch


def input_signature(session: ort.InferenceSession) -> Signature:
    """Width from the first input's second axis: a number is fixed, a name is dynamic."""
    first = session.get_inputs()[0]
    dtype = _DTYPES.get(first.type)
    shape = list(first.shape)
    if len(shape) == 2 and isinstance(shape[1], int) and shape[1] > 0:
        return Signature(width=shape[1], pad=False, dtype=dtype, softmax=True,
                         describe=f"input {first.name!r} has shape {shape}")
    return Signature(pad=len(shape) == 2, dtype=dtype, softmax=True)


def loads_code(config: Config, model_uri: str) -> bool:
    """An ONNX graph is data: onnxruntime interprets it, it holds no Python."""
    return False


def describe(config: Config, model_uri: str) -> Signature:
    """Open one session to check the file and read its input shape and type."""
    probe = OnnxModelHandlerNumpy(model_uri, providers=["CPUExecutionProvider"])
    return input_signature(load_once(probe.load_model, model_uri, "onnx"))


def build(config: Config, model_uri: str, signature: Signature) -> Framework:
    """Beam's handler for the graph ``signature`` describes."""
    providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if config.device == "GPU"
                 else ["CPUExecutionProvider"])
    handler = _OnnxHandler(model_uri, providers=providers, inference_fn=_infer,
                           large_model=config.large_model, model_copies=config.model_copies)
    return Framework(
        handler=handler, spec=signature.input_spec(), model_id=model_uri, to_model=_identity,
        prepare=_set_threads, softmax=signature.softmax, predict=_infer)


def _set_threads(threads: int) -> None:
    _OnnxHandler.threads = threads
