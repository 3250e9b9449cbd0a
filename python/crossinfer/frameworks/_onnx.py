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
from crossinfer._handler import BuiltHandler, model_threads
from crossinfer._loading import argument_for, load_once
from crossinfer._onnx_files import self_contained
from crossinfer._policy import Policy
from crossinfer._signature import Signature

_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64",
           "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bool)": "bool"}


def _infer(input_name: str, output_names: Optional[tuple[str, ...]], session: Any,
           batch: np.ndarray, inference_args: Optional[dict] = None,
           index: Optional[int] = None, keys: Optional[tuple[Any, ...]] = None) -> Any:
    """One stacked batch through the session; names and the output used from the signature
    (``index``: that output alone; ``keys``: it is a ZipMap's list of dicts, read in that
    class order)."""
    feeds = {input_name: batch, **(inference_args or {})}
    if output_names is None:
        return _dense(session.run(None, feeds)[index or 0], keys)
    outs = session.run(list(output_names), feeds)
    return [{name: out[i] for name, out in zip(output_names, outs)} for i in range(len(batch))]


def _dense(out: Any, keys: Optional[tuple[Any, ...]]) -> Any:
    """A ZipMap output (one {class: probability} per row) as a [rows, classes] array."""
    if keys is None:
        return out
    rows = [{str(k): v for k, v in row.items()} for row in out]
    return np.asarray([[row[k] for k in keys] for row in rows], dtype=np.float32)


class _OnnxHandler(OnnxModelHandlerNumpy):
    """Beam's handler; its SessionOptions are made at load time (they do not pickle), with
    the thread count of the process that loads it. The model's path and providers are kept
    here too: Beam keeps them in private attributes, and this class loads the model itself."""

    def __init__(self, model_uri: str, *, policy: Policy, providers: list[str],
                 **kwargs: Any) -> None:
        super().__init__(model_uri, providers=providers, **kwargs)
        self._uri, self._policy, self._ort_providers = model_uri, policy, list(providers)

    def update_model_path(self, model_path: Optional[str] = None) -> None:
        # Beam's ONNX handler ignores model updates (no override).
        self._uri = model_path or self._uri

    def load_model(self, model: Optional[bytes] = None) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = model_threads()
        options.inter_op_num_threads = 1
        # Bytes with every external reference already read in (by descriptor, inside the
        # model's directory): onnxruntime opens no file of its own.
        if model is None:
            model = self_contained(self._uri, self._policy.repository)
        return ort.InferenceSession(model, sess_options=options,
                                    providers=self._ort_providers)


def _identity(batch: np.ndarray) -> np.ndarray:
    return batch


def loads_code(config: Config, model_uri: str) -> bool:
    """An ONNX graph is data: onnxruntime interprets it, it holds no Python."""
    return False


def _graph(model: bytes) -> Any:
    """The model's graph (read with the onnx package: data only)."""
    import onnx

    return onnx.load_model_from_string(model).graph


def _final_ops(graph: Any) -> dict[str, str]:
    """Graph output name -> the op that computes it."""
    made_by = {out: node.op_type for node in graph.node for out in node.output}
    return {o.name: made_by.get(o.name, "") for o in graph.output}


def _classes(graph: Any) -> tuple[Optional[tuple[str, ...]], Optional[tuple[int, ...]], str]:
    """A classifier's class labels from its ai.onnx.ml node (strings or integers), and the
    node's type."""
    for node in graph.node:
        for attr in node.attribute:
            if attr.name == "classlabels_strings" and attr.strings:
                return tuple(x.decode() for x in attr.strings), None, node.op_type
            if attr.name == "classlabels_int64s" and attr.ints:
                return None, tuple(int(x) for x in attr.ints), node.op_type
    return None, None, ""


def _classifier(outputs: list[Any], graph: Any) -> Optional[tuple[int, int]]:
    """(label output, probabilities output) of an exported classifier: a label tensor of
    rank 1 beside class scores (a tensor, or a ZipMap's sequence of maps)."""
    if len(outputs) != 2:
        return None
    kinds = [o.type for o in outputs]
    for label, scores in ((0, 1), (1, 0)):
        if kinds[label] in ("tensor(string)", "tensor(int64)") and len(
                outputs[label].shape) == 1 and (kinds[scores].startswith("seq(map(")
                                                or kinds[scores] == "tensor(float)"):
            return label, scores
    return None


def describe(config: Config, model_uri: str, policy: Policy) -> Signature:
    """Open one session; read the graph's inputs, outputs and final ops; probe it."""
    probe = _OnnxHandler(model_uri, policy=policy, providers=["CPUExecutionProvider"])
    argument = argument_for(config, model_uri)
    # Read once: the bytes the session runs are the bytes the graph is read from.
    model = load_once(lambda: self_contained(model_uri, policy.repository), model_uri, "onnx",
                      argument, policy=policy)
    session = load_once(lambda: probe.load_model(model), model_uri, "onnx", argument,
                        policy=policy)
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
    names = [o.name for o in outputs]
    graph = _graph(model)
    keys = None
    index = config.output_index
    classifier = _classifier(outputs, graph) if config.output != "named" else None
    if classifier is not None and _classes(graph) == (None, None, ""):
        classifier = None  # a label beside scores, but no classifier node says the classes
    if index is not None and index >= len(outputs):
        raise ConfigurationError(
            f"output_index={index}, but {what} has {len(outputs)} outputs ({', '.join(names)})")
    if classifier is not None and index is None:
        # An exported classifier: its label output is the argmax of its class scores, so the
        # scores are used (checked against the labels below) and the labels name the classes.
        label_at, index = classifier
        d.label_names, d.labels, op = _classes(graph)
        d.sources["labels"] = f"the {op or 'classifier'} node's class labels"
        d.output, d.sources["output"] = "probabilities", (
            f"output {names[index]!r} holds the class scores of label output "
            f"{names[label_at]!r}")
        if outputs[index].type.startswith("seq(map("):
            keys = tuple(str(k) for k in (d.label_names or d.labels))
    elif len(outputs) > 1 and config.output != "named" and index is None:
        raise ConfigurationError(
            f"{what} has {len(outputs)} outputs ({', '.join(names)}); say which to use: "
            "output_index=0 (or another position), or output='named' with a custom "
            "postprocess that gets them all")
    if config.output == "named":
        d.output_names = tuple(names)
    else:
        used = names[index or 0]
        op = _final_ops(graph).get(used, "")
        if op == "Softmax":
            d.output, d.sources["output"] = "probabilities", f"output {used!r} is a Softmax"
        elif op == "LogSoftmax":
            d.output, d.sources["output"] = "logits", f"output {used!r} is a LogSoftmax"
    d.output_index = index
    d.zipmap_keys = keys
    run = functools.partial(_infer, first.name,
                            d.output_names if config.output == "named" else None, session,
                            index=index, keys=keys)

    def run_dict(batch: np.ndarray) -> Any:
        out = run(batch, config.inference_args)
        if isinstance(out, list):  # named: back to a dict of arrays for the probe
            return {k: np.stack([r[k] for r in out]) for k in (d.output_names or ())}
        if classifier is not None and config.output_index is None:
            _check_labels(session, first.name, batch, config, classifier[0], out, d, what)
        return out

    return _probe.complete(config, d, run_dict, what)


def _check_labels(session: Any, input_name: str, batch: np.ndarray, config: Config,
                  label_at: int, scores: np.ndarray, d: _probe.Declared, what: str) -> None:
    """The classifier's own labels are the argmax of the scores crossinfer uses."""
    labels = session.run(None, {input_name: batch, **(config.inference_args or {})})[label_at]
    classes = d.label_names or d.labels
    if classes is None or len(classes) != np.asarray(scores).shape[-1]:
        return
    mine = [classes[i] for i in np.asarray(scores).argmax(axis=1)]
    theirs = [x.decode() if isinstance(x, bytes) else (str(x) if d.label_names else int(x))
              for x in np.asarray(labels).tolist()]
    if mine != theirs:
        raise ConfigurationError(
            f"{what}'s label output does not match the argmax of its class scores on a probe "
            "batch; set output='named' with a custom postprocess that reads both")


def build(config: Config, model_uri: str, signature: Signature,
          policy: Policy) -> BuiltHandler:
    """Beam's handler for the graph ``signature`` describes."""
    providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if config.device == "GPU"
                 else ["CPUExecutionProvider"])
    predict = functools.partial(
        _infer, signature.input_name,
        signature.output_names if signature.output == "named" else None,
        index=signature.output_index, keys=signature.zipmap_keys)
    handler = _OnnxHandler(model_uri, policy=policy, providers=providers, inference_fn=predict,
                           large_model=config.large_model, model_copies=config.model_copies,
                           env_vars=dict(config.env_vars or {}))
    return BuiltHandler(
        handler=handler, spec=signature.input_spec(), model_id=model_uri, to_model=_identity,
        predict=predict)
