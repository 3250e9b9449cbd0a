"""A ModelHandler wrapper around Beam's own handlers that keeps each row with its input.

Beam's handlers take bare model inputs; ours take ``Item(x, row)`` so every prediction can be
joined back to its row. Around the inner handler it adds what Beam lacks: padding and length
buckets for variable-length inputs, a failing batch split until only the bad rows fail, a
cheap batch size estimate, and one intra-op thread per process by default.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any, Callable, NamedTuple, Optional

from apache_beam.ml.inference.base import KeyedModelHandler, KeyModelMapping, ModelHandler

from crossinfer import _batching
from crossinfer._features import InputSpec


class Item(NamedTuple):
    x: Any  # the model input
    row: Any  # the input row, for passthrough fields and failure reports


class Scored(NamedTuple):
    row: Any
    inference: Any
    model_id: str


class Failed(NamedTuple):
    row: Any
    stage: str
    error: str


def describe(e: BaseException) -> str:
    """'ExceptionType: message', the form of every failure's error field."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def model_threads() -> int:
    """Intra-op threads per model: 1 unless CROSSINFER_MODEL_THREADS says otherwise.

    Beam runs one SDK process per core on Dataflow and several bundles per process; a model
    thread pool the size of the machine in each of them fights the runner's threads.
    """
    return max(1, int(os.environ.get("CROSSINFER_MODEL_THREADS", "1")))


@dataclasses.dataclass(frozen=True)
class Framework:
    """One loaded-and-checked model: Beam's handler plus what we learned about its input."""

    handler: ModelHandler
    spec: InputSpec
    model_id: str
    to_model: Optional[Callable[[Any], Any]]  # stacked numpy batch -> model batch; None: a list
    prepare: Callable[[int], None]  # sets the framework's thread pools, before loading
    softmax: bool = False  # argmax over logits (True) or over probabilities (False)
    classes: Optional[tuple[int, ...]] = None  # label of each output column, if not 0..n-1


class RowHandler(ModelHandler):
    """Wraps one framework handler: takes Items, returns Scored or Failed, one per Item."""

    def __init__(self, framework: Framework, batching: Mapping[str, Any]) -> None:
        super().__init__()
        self._fw = framework
        self._inner = framework.handler
        self._batching = dict(batching)

    def load_model(self) -> Any:
        self._fw.prepare(model_threads())
        return self._inner.load_model()

    def run_inference(self, batch: Sequence[Item], model: Any,
                      inference_args: Optional[dict[str, Any]] = None) -> list[Any]:
        out: list[Any] = [None] * len(batch)
        xs = [item.x for item in batch]
        if self._fw.spec.pad and self._fw.to_model is not None:
            lengths = [x.shape[0] for x in xs]
            groups = (_batching.length_buckets(lengths) if min(lengths) != max(lengths)
                      else [list(range(len(batch)))])
        else:
            groups = [list(range(len(batch)))]
        for group in groups:
            self._run(group, batch, model, inference_args, out)
        return out

    def _run(self, idx: list[int], batch: Sequence[Item], model: Any,
             inference_args: Optional[dict[str, Any]], out: list[Any]) -> None:
        try:
            xs = [batch[i].x for i in idx]
            if self._fw.to_model is None:
                model_batch: Any = xs
            else:
                model_batch = self._fw.to_model(_batching.stack(xs, self._fw.spec.pad))
            results = list(self._inner.run_inference(model_batch, model, inference_args))
            if len(results) != len(idx):
                raise RuntimeError(
                    f"the model handler returned {len(results)} results for {len(idx)} inputs")
        except Exception as e:  # pylint: disable=broad-except
            if len(idx) == 1:
                out[idx[0]] = Failed(batch[idx[0]].row, "inference", describe(e))
                return
            # Split until only the rows that fail on their own are failures.
            half = len(idx) // 2
            self._run(idx[:half], batch, model, inference_args, out)
            self._run(idx[half:], batch, model, inference_args, out)
            return
        for i, result in zip(idx, results):
            out[i] = Scored(batch[i].row, result.inference, result.model_id or self._fw.model_id)

    def get_num_bytes(self, batch: Sequence[Item]) -> int:
        # Beam's torch handler walks every scalar in Python; the array size is enough.
        return sum(getattr(item.x, "nbytes", 64) for item in batch)

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        return self._batching

    def get_metrics_namespace(self) -> str:
        return self._inner.get_metrics_namespace()

    def get_resource_hints(self) -> dict:
        return self._inner.get_resource_hints()

    def validate_inference_args(self, inference_args: Optional[dict[str, Any]]) -> None:
        self._inner.validate_inference_args(inference_args)

    def update_model_path(self, model_path: Optional[str] = None) -> None:
        self._inner.update_model_path(model_path)

    def share_model_across_processes(self) -> bool:
        return self._inner.share_model_across_processes()

    def model_copies(self) -> int:
        return self._inner.model_copies()

    def should_garbage_collect_on_timeout(self) -> bool:
        return self._inner.should_garbage_collect_on_timeout()


class KeyedRowHandler(KeyedModelHandler):
    """Beam's KeyedModelHandler over RowHandlers, honouring our batching settings.

    Beam ignores per-model batching kwargs when several models are keyed; its docs say to
    override batch_elements_kwargs on the keyed handler, which is what this does.
    """

    def __init__(self, handlers: Mapping[str, RowHandler], batching: Mapping[str, Any]) -> None:
        super().__init__([KeyModelMapping([key], mh) for key, mh in handlers.items()])
        self._batching = dict(batching)

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        return self._batching

    def get_num_bytes(self, batch: Sequence[tuple[str, Item]]) -> int:
        return sum(getattr(item.x, "nbytes", 64) for _, item in batch)
