"""ONNX: Beam's OnnxModelHandlerNumpy with onnxruntime, one session thread by default.

The graph declares its input (name, element type, shape: a number is a fixed axis, a name a
dynamic one) and its outputs; a graph output computed by a Softmax node is probabilities.
A graph with several inputs is refused at construction (crossinfer feeds one array per row);
several outputs need ``output="named"``. On the workers the input and output names come from
the signature, never from the session (a shared session is a proxy to another process).
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import numpy as np
import onnxruntime as ort
from apache_beam.ml.inference.onnx_inference import OnnxModelHandlerNumpy

from crossinfer import _probe
from crossinfer._config import Config
from crossinfer._errors import ConfigurationError
from crossinfer._handler import Framework, model_threads
from crossinfer._loading import load_once
from crossinfer._onnx_files import self_contained
from crossinfer._signature import Signature

_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64",
           "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bool)": "bool"}


def _infer(input_name: str, output_names: Optional[tuple[str, ...]], session: Any,
           batch: np.ndarray, inference_args: Optional[dict] = None) -> Any:
    """One stacked batch through the session; names from the signature."""
    feeds = {input_name: batch, **(inference_args or {})}
    if output_names is None:
        return session.run(None, feeds)[0]
    outs = session.run(list(output_names), feeds)
    return [{name: out[i] for name, out in zip(output_names, outs)} for i in range(len(batch))]


class _OnnxHandler(OnnxModelHandlerNumpy):
    """Beam's handler; its SessionOptions are made at load time (they do not pickle), with
    the thread count of the process that loads it."""

    def load_model(self, model: Optional[bytes] = None) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = model_threads()
        options.inter_op_num_threads = 1
        # Bytes with every external reference already read in (by descriptor, inside the
        # model's directory): onnxruntime opens no file of its own.
        if model is None:
            model = self_contained(self._model_uri)
        return ort.InferenceSession(model, sess_options=options,
                                    providers=self._providers,
                                    provider_options=self._provider_options)


def _identity(batch: np.ndarray) -> np.ndarray:
    return batch


def loads_code(config: Config, model_uri: str) -> bool:
    """An ONNX graph is data: onnxruntime interprets it, it holds no Python."""
    return False


def _final_ops(model: bytes) -> dict[str, str]:
    """Graph output name -> the op that computes it (read with the onnx package: data only)."""
    import onnx

    graph = onnx.load_model_from_string(model).graph
    made_by = {out: node.op_type for node in graph.node for out in node.output}
    return {o.name: made_by.get(o.name, "") for o in graph.output}


def describe(config: Config, model_uri: str) -> Signature:
    """Open one session; read the graph's inputs, outputs and final ops; probe it."""
    probe = _OnnxHandler(model_uri, providers=["CPUExecutionProvider"])
    # Read once: the bytes the session runs are the bytes the graph is read from.
    model = load_once(lambda: self_contained(model_uri), model_uri, "onnx")
    session = load_once(lambda: probe.load_model(model), model_uri, "onnx")
    what = f"the ONNX model ({model_uri})"
    inputs, outputs = session.get_inputs(), session.get_outputs()
    required = [i for i in inputs if i.name not in (config.inference_args or {})]
    if len(required) != 1:
        raise ConfigurationError(
            f"{what} has {len(required)} inputs ({', '.join(i.name for i in required)}); "
            "crossinfer feeds one array per row: use framework='custom' with your own handler "
            "(inputs named in inference_args are fed those values on every call)")
    first = required[0]
    d = _probe.Declared(input_name=first.name, input_dtype=_DTYPES.get(first.type))
    d.sources["input_dtype"] = f"input {first.name!r} is {first.type}"
    shape = list(first.shape)
    if not shape or isinstance(shape[0], int) and shape[0] > 1:
        raise ConfigurationError(
            f"{what}'s input {first.name!r} has shape {shape}: no batch axis; export it with a "
            "dynamic first axis")
    rest = [d_ if isinstance(d_, int) and d_ > 0 else -1 for d_ in shape[1:]]
    if rest and rest.count(-1) <= 1:
        d.input_shape = tuple(rest)
        d.sources["input_shape"] = f"input {first.name!r} has shape {shape}"
    else:
        d.sources["input_shape"] = f"input {first.name!r} has shape {shape}"
    names = [o.name for o in outputs]
    if len(outputs) > 1 and config.output != "named":
        raise ConfigurationError(
            f"{what} has {len(outputs)} outputs ({', '.join(names)}); set output='named' "
            "(with a custom postprocess that picks the fields) or export one output")
    if config.output == "named":
        d.output_names = tuple(names)
    else:
        op = _final_ops(model).get(names[0], "")
        if op == "Softmax":
            d.output, d.sources["output"] = "probabilities", f"output {names[0]!r} is a Softmax"
        elif op == "LogSoftmax":
            d.output, d.sources["output"] = "logits", f"output {names[0]!r} is a LogSoftmax"
    run = functools.partial(_infer, first.name,
                            d.output_names if config.output == "named" else None, session)

    def run_dict(batch: np.ndarray) -> Any:
        out = run(batch, config.inference_args)
        if isinstance(out, list):  # named: back to a dict of arrays for the probe
            return {k: np.stack([r[k] for r in out]) for k in (d.output_names or ())}
        return out

    return _probe.complete(config, d, run_dict, what)


def build(config: Config, model_uri: str, signature: Signature) -> Framework:
    """Beam's handler for the graph ``signature`` describes."""
    providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if config.device == "GPU"
                 else ["CPUExecutionProvider"])
    predict = functools.partial(
        _infer, signature.input_name,
        signature.output_names if signature.output == "named" else None)
    handler = _OnnxHandler(model_uri, providers=providers, inference_fn=predict,
                           large_model=config.large_model, model_copies=config.model_copies)
    return Framework(
        handler=handler, spec=signature.input_spec(), model_id=model_uri, to_model=_identity,
        predict=predict)
