"""ONNX: Beam's OnnxModelHandlerNumpy with onnxruntime, one session thread by default."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import onnxruntime as ort
from apache_beam.ml.inference.onnx_inference import OnnxModelHandlerNumpy

from crossinfer._config import Config
from crossinfer._features import InputSpec
from crossinfer._handler import Framework
from crossinfer._loading import load_once

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


def input_spec(session: ort.InferenceSession) -> InputSpec:
    """Width from the first input's second axis: a number is fixed, a name is dynamic."""
    first = session.get_inputs()[0]
    dtype = _DTYPES.get(first.type)
    shape = list(first.shape)
    if len(shape) == 2 and isinstance(shape[1], int) and shape[1] > 0:
        return InputSpec(width=shape[1], pad=False, dtype=dtype,
                         describe=f"input {first.name!r} has shape {shape}")
    return InputSpec(pad=len(shape) == 2, dtype=dtype)


def build(config: Config, model_uri: str) -> Framework:
    """Open one session to check the file and read its input shape and type."""
    providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if config.device == "GPU"
                 else ["CPUExecutionProvider"])
    probe = OnnxModelHandlerNumpy(model_uri, providers=["CPUExecutionProvider"])
    session = load_once(probe.load_model, model_uri, "onnx")
    handler = _OnnxHandler(model_uri, providers=providers, inference_fn=_infer,
                           large_model=config.large_model, model_copies=config.model_copies)
    return Framework(
        handler=handler, spec=input_spec(session), model_id=model_uri, to_model=_identity,
        prepare=_set_threads, softmax=True, predict=_infer)


def _set_threads(threads: int) -> None:
    _OnnxHandler.threads = threads
