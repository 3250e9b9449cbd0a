"""A ModelHandler wrapper around Beam's own handlers that takes input rows, not model inputs.

Beam's handlers take bare model inputs; ours take the rows themselves, so the per-row work
happens once per batch: one numpy conversion reads the whole batch's features, one model call
scores it, and RunInference emits one ``Outcomes`` per batch, which the postprocess step turns
into prediction and failure rows. Around the inner handler it adds what Beam lacks: padding
and length buckets for variable-length inputs, a failing batch split until only the bad rows
fail, and one intra-op thread per process by default.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import gc
import os
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Callable, ContextManager, NamedTuple, Optional

import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import (
    KeyedModelHandler, KeyModelMapping, ModelHandler, PredictionResult)

from crossinfer import _batching
from crossinfer._errors import InputError, describe
from crossinfer._features import Extractor, InputSpec

__all__ = ["BuiltHandler", "Outcomes", "RowHandler", "KeyedRowHandler", "describe",
           "model_threads"]

_PADDED = Metrics.counter("crossinfer", "padded_tokens")
# What torch, onnxruntime and numpy say when an input's dtype is not the model's.
_DTYPE_ERROR = re.compile(r"dtype|scalar type|expected .*(Float|Double|Long|Int)\b|"
                          r"tensor\((float|double|int64|int32)\)")
_REAL = Metrics.counter("crossinfer", "real_tokens")


class Outcomes(NamedTuple):
    """What one batch of rows came to; RunInference emits one of these per batch."""

    rows: Sequence[Any]  # the batch's input rows
    model_id: str
    scored: list[int]  # indices of the rows that have a model output, in output order
    output: Any  # numpy array with one entry per scored row, or a list of per-row inferences
    failed: list[tuple[int, str, str]]  # (row index, stage, error)


def model_threads() -> int:
    """Intra-op threads per model: 1 unless CROSSINFER_MODEL_THREADS says otherwise.

    Beam runs one SDK process per core on Dataflow and several bundles per process; a model
    thread pool the size of the machine in each of them fights the runner's threads.
    """
    return max(1, int(os.environ.get("CROSSINFER_MODEL_THREADS", "1")))


def freeze_gc() -> None:
    """Move what is alive once the model is loaded out of the cyclic GC's full collections.

    By then a worker holds hundreds of thousands of long-lived objects (Beam, torch, the
    model); input rows that live for a batch push Python into full collections that walk all
    of them, measured at a quarter to a third of the element path's time (bench/profiles).
    Frozen objects are still freed by reference counting. Only in worker processes (see
    ``RowHandler.load_model``); CROSSINFER_GC_FREEZE=0 turns it off.
    """
    if os.environ.get("CROSSINFER_GC_FREEZE", "1") != "0":
        gc.freeze()
        if not _UNFREEZE_AT_EXIT:
            # Collected again at exit, so extension modules see their objects freed.
            atexit.register(gc.unfreeze)
            _UNFREEZE_AT_EXIT.append(True)


_UNFREEZE_AT_EXIT: list[bool] = []


class BundleFreeze:
    """In the process that built the pipeline: full collections skip what existed before a
    bundle, for that bundle only.

    There the GC is not frozen for good (that would keep the caller's cyclic garbage), but
    the same full collections that walk every object of Beam, torch and the model cost the
    element path as much. ``gc.freeze()`` when the first bundle starts and ``gc.unfreeze()``
    when the last one ends only defer collecting that older garbage until then (both are
    O(1)). Nothing is done where anything else froze objects (a worker's own freeze), or
    with CROSSINFER_GC_FREEZE=0.
    """

    _lock = threading.Lock()
    _open = 0
    _ours = False

    @classmethod
    def enter(cls) -> None:
        with cls._lock:
            if cls._open == 0:
                cls._ours = (os.environ.get("CROSSINFER_GC_FREEZE", "1") != "0"
                             and gc.isenabled() and gc.get_freeze_count() == 0)
                if cls._ours:
                    gc.freeze()
            cls._open += 1

    @classmethod
    def exit(cls) -> None:
        with cls._lock:
            cls._open = max(0, cls._open - 1)
            if cls._open == 0 and cls._ours:
                cls._ours = False
                gc.unfreeze()
_HELD_LIMITS: list[ContextManager[None]] = []  # a worker's thread caps, held for its life


def _no_limit(threads: int) -> ContextManager[None]:
    return contextlib.nullcontext()


@dataclasses.dataclass(frozen=True)
class BuiltHandler:
    """One checked model: Beam's handler plus its signature's input spec, as plain data."""

    handler: ModelHandler
    spec: InputSpec
    model_id: str
    to_model: Optional[Callable[[Any], Any]]  # stacked numpy batch -> model batch; None: a list
    # threads -> a context that caps the framework's thread pools and restores them on exit
    limit_threads: Callable[[int], ContextManager[None]] = _no_limit
    # (model, model batch, inference_args) -> numpy output (or a list of per-row dicts for
    # output="named"), one entry per row. Skips the handler's per-row PredictionResult
    # objects; None: call the handler's run_inference.
    predict: Optional[Callable[[Any, Any, Optional[dict]], Any]] = None
    each: Optional[Callable[[Any], Any]] = None  # to_model None: one model input -> handler's


class RowHandler(ModelHandler):
    """Wraps one framework handler: takes rows, returns one Outcomes per batch."""

    def __init__(self, framework: BuiltHandler, extract: Extractor, batching: Mapping[str, Any],
                 reader: Optional[Callable[[Any, InputSpec], tuple]] = None,
                 max_rows: Optional[int] = None) -> None:
        super().__init__()
        self._fw = framework
        self._inner = framework.handler
        self._extract = extract
        self._batching = dict(batching)
        self._reader = reader  # blocks=True: block element -> (Block, good, xs, bad)
        self._max_rows = max_rows  # blocks=True: rows per model call at most
        self._row_bytes = 8 * (framework.spec.width or 64)
        # The process that built the pipeline. A runner that runs the pipeline in this same
        # process (the DirectRunner in-process, a loopback worker) must not change it: thread
        # caps then hold only during each model call, and the GC is frozen per bundle only.
        self._owner_pid = os.getpid()
        self._in_worker = False
        self._model_id = framework.model_id  # a model update (update_model_path) changes it
        self._post_fns = list(framework.handler.get_postprocess_fns())
        self._pre_fns = list(framework.handler.get_preprocess_fns())

    def load_model(self) -> Any:
        threads = model_threads()
        if os.getpid() != self._owner_pid:
            # A worker process (or Beam's shared-model process): cap its pools for good.
            held = self._fw.limit_threads(threads)
            held.__enter__()
            _HELD_LIMITS.append(held)  # never exited: collecting it would restore the pools
            model = self._inner.load_model()
            freeze_gc()
            self._in_worker = True
            return model
        with self._fw.limit_threads(threads):
            return self._inner.load_model()

    def _call_limit(self) -> ContextManager[None]:
        if self._in_worker or os.getpid() != self._owner_pid:
            return contextlib.nullcontext()
        return self._fw.limit_threads(model_threads())

    def set_environment_vars(self) -> None:
        # Beam calls this on the handler it was given: ours. The env_vars are the inner one's.
        self._inner.set_environment_vars()

    def run_inference(self, batch: Sequence[Any], model: Any,
                      inference_args: Optional[dict[str, Any]] = None) -> list[Outcomes]:
        if self._reader is None:
            good, xs, bad = self._extract.batch(batch, self._fw.spec)
            if self._fw.to_model is not None and not isinstance(xs, np.ndarray):
                good, xs, bad = _arrays_only(good, xs, bad)
            return [self._score(batch, good, xs, bad, model, inference_args)]
        return [self._score_block(element, model, inference_args) for element in batch]

    def _score_block(self, element: Any, model: Any,
                     inference_args: Optional[dict[str, Any]]) -> Outcomes:
        try:
            block, good, xs, bad = self._reader(element, self._fw.spec)
        except Exception as e:  # pylint: disable=broad-except
            # The block cannot be split into rows: the block is one failure.
            return Outcomes([element], self._model_id, [], None,
                            [(0, "preprocess", describe(e))])
        return self._score(block, good, xs, bad, model, inference_args)

    def _score(self, rows: Sequence[Any], good: list[int], xs: Any, bad: list[tuple[int, str]],
               model: Any, inference_args: Optional[dict[str, Any]]) -> Outcomes:
        failed = [(i, "preprocess", error) for i, error in bad]
        pieces: list[tuple[Optional[Sequence[int]], Any]] = []  # (positions in xs, outputs)
        model_id = [self._model_id]
        for group in self._groups(xs):
            self._run(group, xs, model, inference_args, pieces, failed, good, model_id)
        scored, output = _assemble(good, pieces)
        return Outcomes(rows, model_id[0], scored, output, failed)

    def _groups(self, xs: Any) -> list[Optional[list[int]]]:
        """Positions scored together; None: all of xs, as it is."""
        if not len(xs):
            return []
        groups: list[Optional[list[int]]] = [None] if isinstance(xs, np.ndarray) else \
            [list(range(len(xs)))]
        if not isinstance(xs, np.ndarray) and self._fw.spec.pad and self._fw.to_model:
            lengths = [x.shape[self._fw.spec.seq_axis or 0] for x in xs]
            if min(lengths) != max(lengths):
                groups = (_batching.equal_lengths(lengths) if self._fw.spec.exact_lengths
                          else _batching.length_buckets(lengths))
        if self._max_rows and any(len(xs if g is None else g) > self._max_rows for g in groups):
            groups = [g[s:s + self._max_rows]
                      for g in (list(range(len(xs))) if g is None else g for g in groups)
                      for s in range(0, len(g), self._max_rows)]
        return groups

    def _model_batch(self, positions: Optional[list[int]], xs: Any) -> tuple[Any, int]:
        spec = self._fw.spec
        if isinstance(xs, np.ndarray):
            arr = xs if positions is None else xs[positions]
            if self._fw.to_model:
                return self._fw.to_model(arr), len(arr)
            return self._each(list(arr)), len(arr)
        chosen = [xs[p] for p in positions]
        if self._fw.to_model is None:
            return self._each(chosen), len(chosen)
        arr = _batching.stack(chosen, spec.pad, spec.pad_value or 0, spec.seq_axis or 0)
        if spec.pad:
            _PADDED.inc(int(arr.size))
            _REAL.inc(sum(int(x.size) for x in chosen))
        return self._fw.to_model(arr), len(chosen)

    def _each(self, inputs: list[Any]) -> list[Any]:
        """Model inputs for a handler that takes a list: the inner handler's own preprocess
        functions (``with_preprocess_fn``) applied, then its input type."""
        for fn in self._pre_fns:
            inputs = [fn(x) for x in inputs]
        if self._fw.each is not None:
            inputs = [self._fw.each(x) for x in inputs]
        return inputs

    def _run(self, positions: Optional[list[int]], xs: Any, model: Any,
             inference_args: Optional[dict[str, Any]], pieces: list, failed: list,
             good: list[int], model_id: list[str]) -> None:
        try:
            model_batch, n = self._model_batch(positions, xs)
            if self._fw.predict is not None:
                with self._call_limit():
                    out: Any = self._fw.predict(model, model_batch, inference_args)
                if (getattr(out, "ndim", 1) == 0 or not hasattr(out, "__len__")
                        or len(out) != n):
                    raise RuntimeError(f"the model returned output of shape "
                                       f"{getattr(out, 'shape', '?')} for {n} inputs")
            else:
                with self._call_limit():
                    results = list(self._inner.run_inference(model_batch, model,
                                                             inference_args))
                if len(results) != n:
                    raise RuntimeError(
                        f"the model handler returned {len(results)} results for {n} inputs")
                # The inner handler's own postprocess functions (with_postprocess_fn), in order.
                for fn in self._post_fns:
                    results = [fn(r) for r in results]
                out = [r.inference if isinstance(r, PredictionResult) else r for r in results]
                first = results[0] if results else None
                if isinstance(first, PredictionResult) and first.model_id:
                    model_id[0] = first.model_id
        except Exception as e:  # pylint: disable=broad-except
            idx = list(range(len(xs))) if positions is None else positions
            if len(idx) == 1:
                failed.append((good[idx[0]], "inference", self._explain(describe(e))))
                return
            # Split until only the rows that fail on their own are failures.
            half = len(idx) // 2
            for part in (idx[:half], idx[half:]):
                self._run(part, xs, model, inference_args, pieces, failed, good, model_id)
            return
        pieces.append((positions, out))

    def _explain(self, error: str) -> str:
        """A dtype mismatch in a model the signature could not probe (a custom handler's)
        names the argument that fixes it."""
        if self._fw.spec.dtype is None and _DTYPE_ERROR.search(error):
            return (f"{error} (the rows' values reach the model in their own dtype: set "
                    "input_dtype to the one the model takes, e.g. 'float32')")
        return error

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        # Beam's torch handler walks every scalar in Python; an estimate is enough.
        return len(batch) * self._row_bytes

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        return self._batching

    def get_metrics_namespace(self) -> str:
        return self._inner.get_metrics_namespace()

    def get_resource_hints(self) -> dict:
        return self._inner.get_resource_hints()

    def validate_inference_args(self, inference_args: Optional[dict[str, Any]]) -> None:
        self._inner.validate_inference_args(inference_args)

    def update_model_path(self, model_path: Optional[str] = None) -> None:
        # RunInference calls this with a checked update's model_id before it loads that
        # model, and again after: predictions then name the model that made them. The id
        # may carry the file's version (path@digest, crossinfer._updates.WindowModel).
        from crossinfer._updates import path_of  # imported here: _updates imports the plan
        self._inner.update_model_path(path_of(model_path) if model_path else model_path)
        if model_path:
            self._model_id = model_path

    def share_model_across_processes(self) -> bool:
        return self._inner.share_model_across_processes()

    def model_copies(self) -> int:
        return self._inner.model_copies()

    def should_garbage_collect_on_timeout(self) -> bool:
        return self._inner.should_garbage_collect_on_timeout()

    def override_metrics(self, metrics_namespace: str = "") -> bool:
        return self._inner.override_metrics(metrics_namespace)


def _arrays_only(good: list[int], xs: list[Any], bad: list[tuple[int, str]]
                 ) -> tuple[list[int], list[Any], list[tuple[int, str]]]:
    """A framework that stacks rows takes one array per row: anything else (a preprocess
    that returns a dict of tensors) is that row's failure, not a failed batch."""
    keep = [j for j, x in enumerate(xs) if isinstance(x, np.ndarray)]
    if len(keep) == len(xs):
        return good, xs, bad
    bad = bad + [(good[j], describe(InputError(
        f"the preprocess output is {type(xs[j]).__name__}, not one array; this framework "
        "stacks one array per row (for dicts of tensors use framework='custom' with e.g. "
        "Beam's PytorchModelHandlerKeyedTensor)"))) for j in range(len(xs)) if j not in keep]
    return [good[j] for j in keep], [xs[j] for j in keep], bad


def _assemble(good: list[int], pieces: list[tuple[Optional[Sequence[int]], Any]]
              ) -> tuple[list[int], Any]:
    """(row indices, outputs in the same order) from the scored pieces of a batch."""
    if len(pieces) == 1 and pieces[0][0] is None:
        return good, pieces[0][1]
    scored = [good[p] for positions, out in pieces
              for p in (range(len(out)) if positions is None else positions)]
    outs = [out for _, out in pieces]
    if outs and all(isinstance(o, np.ndarray) for o in outs) and \
            len({o.shape[1:] for o in outs}) == 1:
        return scored, np.concatenate(outs)
    return scored, [row for out in outs for row in out]


class KeyedRowHandler(KeyedModelHandler):
    """Beam's KeyedModelHandler over RowHandlers, honouring our batching settings.

    Beam ignores per-model batching kwargs when several models are keyed; its docs say to
    override batch_elements_kwargs on the keyed handler, which is what this does. Each
    model's RowHandler returns one Outcomes for its part of the batch, so the keyed handler
    emits (key, Outcomes) pairs.
    """

    def __init__(self, handlers: Mapping[str, RowHandler], batching: Mapping[str, Any],
                 max_models_per_worker_hint: Optional[int] = None) -> None:
        super().__init__([KeyModelMapping([key], mh) for key, mh in handlers.items()],
                         max_models_per_worker_hint=max_models_per_worker_hint)
        self._batching = dict(batching)

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        return self._batching

    def get_num_bytes(self, batch: Sequence[tuple[str, Any]]) -> int:
        return len(batch) * 256
