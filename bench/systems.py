"""The systems compared: the raw model loop, stock Beam RunInference, crossinfer (rows, blocks).

Each ``run_*`` function runs one measurement in this process and returns its timings; the
worker (bench/worker.py) calls it once per repeat, each system in its own process.
"""

from __future__ import annotations

import pickle
import time
from typing import Any, Optional

import numpy as np

from bench import data
from bench.workloads import Workload


# --- the raw model loop: the model called directly on a preloaded array ----------------------

def _raw_predict(w: Workload, paths: dict[str, str], threads: Optional[int]):
    if w.model == "sklearn":
        import threadpoolctl
        if threads:
            threadpoolctl.threadpool_limits(threads)
        with open(paths["sklearn"], "rb") as f:
            model = pickle.load(f)
        return model.predict_proba
    if w.model == "onnx":
        import onnxruntime as ort
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        session = ort.InferenceSession(paths["onnx"], options,
                                       providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})[0]
    import torch
    from bench.models import MLP, SeqModel
    if threads:
        torch.set_num_threads(threads)
    module = MLP() if w.model == "mlp" else SeqModel()
    module.load_state_dict(torch.load(paths[w.model]))
    module.eval()

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()
    return predict


def run_raw(w: Workload, paths: dict[str, str], n: int, batch: int,
            threads: Optional[int]) -> dict[str, Any]:
    predict = _raw_predict(w, paths, threads)
    rows = data.LOADED[w.data]
    if w.data == "sequences":  # sorted by length, zero-padded per batch: the least padding
        order = sorted(range(n), key=lambda i: len(rows[i]))
        batches = []
        for s in range(0, n, batch):
            idx = order[s:s + batch]
            width = len(rows[idx[-1]])
            x = np.zeros((len(idx), width), dtype=np.int64)
            for j, i in enumerate(idx):
                x[j, :len(rows[i])] = rows[i]
            batches.append(x)
        t0 = time.perf_counter()
        for x in batches:
            predict(x)
    else:
        t0 = time.perf_counter()
        for s in range(0, n, batch):
            predict(rows[s:s + batch])
    seconds = time.perf_counter() - t0
    return {"wall": seconds, "window": seconds, "rows": n}


# --- stock Beam RunInference, fed numpy arrays / tensors --------------------------------------

def stock_handler(w: Workload, paths: dict[str, str], batching: dict[str, int]) -> Any:
    if w.model == "sklearn":
        from apache_beam.ml.inference.sklearn_inference import SklearnModelHandlerNumpy
        return SklearnModelHandlerNumpy(paths["sklearn"], **batching)
    if w.model == "onnx":
        from apache_beam.ml.inference.onnx_inference import OnnxModelHandlerNumpy
        return OnnxModelHandlerNumpy(paths["onnx"], **batching)
    from apache_beam.ml.inference.pytorch_inference import PytorchModelHandlerTensor
    from bench.models import MLP, SeqModel
    return PytorchModelHandlerTensor(
        state_dict_path=paths[w.model], model_class=MLP if w.model == "mlp" else SeqModel,
        model_params={}, **batching)


def user_row_to_model(torch_tensors: bool):
    """What a user of stock RunInference writes to feed it schema'd rows and keep the id:
    row -> (id, numpy array), or a torch tensor for the torch handler."""
    if torch_tensors:
        import torch

        def to_tensor(row: Any) -> tuple[int, Any]:
            return row.id, torch.from_numpy(np.asarray(row.features, dtype=np.float32))
        return to_tensor

    def to_numpy(row: Any) -> tuple[int, Any]:
        return row.id, np.asarray(row.features, dtype=np.float32)
    return to_numpy


def run_stock(w: Workload, paths: dict[str, str], n: int,
              batching: dict[str, int], shuffle: bool = False,
              rows_in: bool = False) -> dict[str, Any]:
    """Stock RunInference fed numpy arrays (tensors), or with ``rows_in`` fed the schema'd
    rows crossinfer gets plus the user's Row -> numpy Map, keyed by id (KeyedModelHandler)
    so that predictions can be joined back to their rows."""
    import apache_beam as beam
    from bench import pipes
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

    if rows_in:
        shape = "rows"
    elif w.data == "sequences":
        shape = "sequence_arrays"
    else:
        shape = "tensors" if w.model == "mlp" else "numpy"

    def build(p: beam.Pipeline) -> None:
        source = beam.ParDo(pipes.Source(w.data, n, shape))
        rows = p | beam.Impulse() | (source.with_output_types(pipes.FeatureRow) if rows_in
                                     else source)
        if shuffle:
            rows = rows | beam.Reshuffle()
        handler = stock_handler(w, paths, batching)
        if rows_in:
            rows = rows | "UserRowToModel" >> beam.Map(user_row_to_model(w.model == "mlp"))
            handler = KeyedModelHandler(handler)
        _ = (rows | RunInference(handler)
             | beam.ParDo(pipes.Sink("out")))

    out = pipes.timed_run(build)
    return _finish(out, n, batch_metrics=True)


# --- crossinfer ----------------------------------------------------------------------------

def crossinfer_kwargs(w: Workload, paths: dict[str, str]) -> dict[str, Any]:
    kw: dict[str, Any] = {"passthrough_fields": ["id"]}
    if w.model == "sklearn":
        kw.update(framework="sklearn", model_uri=paths["sklearn"])
    elif w.model == "onnx":
        kw.update(framework="onnx", model_uri=paths["onnx"])
    else:
        kw.update(framework="pytorch", model_uri=paths[w.model],
                  model_class="bench.models:MLP" if w.model == "mlp" else "bench.models:SeqModel")
    kw["feature_field"] = "tokens" if w.data == "sequences" else "features"
    return kw


def run_crossinfer(w: Workload, paths: dict[str, str], n: int, blocks: bool = False,
                   extra: Optional[dict[str, Any]] = None,
                   shuffle: bool = False) -> dict[str, Any]:
    import apache_beam as beam
    from bench import pipes
    from crossinfer import Inference

    kw = crossinfer_kwargs(w, paths)
    kw.update(extra or {})
    if blocks:
        kw["blocks"] = True
    shape = "sequences" if w.data == "sequences" else ("blocks" if blocks else "rows")
    rows_of = (lambda b: len(b.id)) if blocks else None
    row_type = {"sequences": pipes.TokenRow, "blocks": pipes.FeatureBlock,
                "rows": pipes.FeatureRow}[shape]

    def build(p: beam.Pipeline) -> None:
        rows = (p | beam.Impulse()
                | beam.ParDo(pipes.Source(w.data, n, shape)).with_output_types(row_type))
        if shuffle:
            rows = rows | beam.Reshuffle().with_output_types(row_type)
        out = rows | Inference(**kw)
        _ = out["predictions"] | "Predictions" >> beam.ParDo(pipes.Sink("predictions", rows_of))
        _ = out["failures"] | "Failures" >> beam.ParDo(pipes.Sink("failures"))

    return _finish(pipes.timed_run(build), n, batch_metrics=True)


def run_source(w: Workload, n: int, shape: str, shuffle: bool = False) -> dict[str, Any]:
    """The floor: the same source straight into the counting sink (through a Reshuffle)."""
    import apache_beam as beam
    from bench import pipes

    row_type = {"rows": pipes.FeatureRow, "blocks": pipes.FeatureBlock}.get(shape)

    def build(p: beam.Pipeline) -> None:
        source = beam.ParDo(pipes.Source(w.data, n, shape))
        rows = p | beam.Impulse() | (source.with_output_types(row_type) if row_type else source)
        if shuffle:  # as in run_crossinfer: the rows keep their schema'd type
            reshuffle = beam.Reshuffle()
            rows = rows | (reshuffle.with_output_types(row_type) if row_type else reshuffle)
        _ = rows | beam.ParDo(pipes.Sink("out", (lambda b: len(b.id)) if shape == "blocks"
                                          else None))
    return _finish(pipes.timed_run(build), n)


def _finish(out: dict[str, Any], n: int, batch_metrics: bool = False) -> dict[str, Any]:
    rows = sum(out["counts"].values())
    if rows != n:
        raise RuntimeError(f"{rows} rows came out for {n} in: {out['counts']}")
    res = {"wall": out["wall"], "window": out["window"], "rows": n,
           "failures": out["counts"].get("failures", 0)}
    if batch_metrics:
        metrics = out["result"].metrics().query()
        for d in metrics["distributions"]:
            if d.key.metric.name == "batch_size" and d.committed:
                res["batches"] = d.committed.count
                res["mean_batch"] = d.committed.sum / max(1, d.committed.count)
        for c in metrics["counters"]:
            if c.key.metric.name in ("padded_tokens", "real_tokens"):
                res[c.key.metric.name] = res.get(c.key.metric.name, 0) + c.committed
    return res
