"""Small real models the tests train themselves, and the named callables tests refer to.

Everything here is importable by name ("tests.models:MLP"), as a user's package would be:
the expansion service is started with --allow 'tests.models.*'.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from collections.abc import Sequence
from typing import Any, NamedTuple, Optional

import numpy as np
import torch
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.ml.inference.sklearn_inference import SklearnModelHandlerNumpy

N_FEATURES = 8
VOCAB = 50


class FeatureRow(NamedTuple):
    """A typed input row, as a Python pipeline would declare it."""

    id: int
    features: Optional[Sequence[float]]


class MLP(torch.nn.Module):
    """Fixed-width classifier: its first layer is nn.Linear(n_features, hidden)."""

    def __init__(self, n_features: int = N_FEATURES, hidden: int = 16, classes: int = 3):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(n_features, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BigTable(torch.nn.Module):
    """A big model (``rows * width`` float32: 4 GiB by default) whose output depends on the
    table's last row: ``head(x) + table[-1, :classes]``."""

    def __init__(self, rows: int = 1 << 20, width: int = 1024, n_features: int = N_FEATURES,
                 classes: int = 2):
        super().__init__()
        self.table = torch.nn.Parameter(torch.zeros(rows, width))
        self.head = torch.nn.Linear(n_features, classes)
        self.classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x) + self.table[-1, :self.classes]


class MeanEmbedding(torch.nn.Module):
    """Sequence classifier that ignores token 0: the mean of the non-padding embeddings."""

    def __init__(self, vocab: int = VOCAB, dim: int = 8, classes: int = 2):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim, padding_idx=0)
        self.head = torch.nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = (tokens != 0).unsqueeze(-1).float()
        pooled = (self.embed(tokens) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(pooled)


class RecordingMeanEmbedding(MeanEmbedding):
    """MeanEmbedding that remembers the shape of every batch it is called with."""

    shapes: list[tuple[int, ...]] = []

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        RecordingMeanEmbedding.shapes.append(tuple(tokens.shape))
        return super().forward(tokens)


class ThreadRecordingMLP(MLP):
    """MLP that remembers torch's intra-op thread count at every call."""

    threads: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ThreadRecordingMLP.threads.append(torch.get_num_threads())
        return super().forward(x)


def dataset(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1.0)
    return x, y


def token_sequences(n: int = 200, seed: int = 0, max_len: int = 40) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len, size=n)
    return [rng.integers(1, VOCAB, size=int(k)).astype(np.int64) for k in lengths]


def train_sklearn(path: Path, seed: int = 0) -> Any:
    from sklearn.linear_model import LogisticRegression

    x, y = dataset(seed=seed)
    model = LogisticRegression(max_iter=500).fit(x, y)
    with open(path, "wb") as f:
        pickle.dump(model, f)
    return model


def train_mlp(path: Path, seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    x, y = dataset(seed=seed)
    model = MLP()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        opt.step()
    model.eval()
    torch.save(model.state_dict(), path)
    return model


def export_torchscript(model: torch.nn.Module, path: Path) -> None:
    torch.jit.script(model).save(str(path))


def export_onnx(model: torch.nn.Module, path: Path, example: torch.Tensor,
                dynamic_length: bool = False) -> None:
    axes = {0: "batch", 1: "length"} if dynamic_length else {0: "batch"}
    torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": axes, "y": {0: "batch"}})


def make_sequence_model(path: Path, seed: int = 0) -> MeanEmbedding:
    torch.manual_seed(seed)
    model = MeanEmbedding().eval()
    torch.save(model.state_dict(), path)
    return model


# Named callables, as a user's package would define them.

def scaled_features(row: Any) -> np.ndarray:
    """preprocess: the row's features, doubled."""
    return np.asarray(row.features, dtype=np.float32) * 2.0


FREEZE_COUNTS: list[int] = []


def freeze_recording_features(row: Any) -> np.ndarray:
    """preprocess: the row's features; records how many objects the GC holds frozen."""
    import gc

    FREEZE_COUNTS.append(gc.get_freeze_count())
    return np.asarray(row.features, dtype=np.float32)


def label_name(result: PredictionResult) -> dict[str, Any]:
    """postprocess: class name and the top logit."""
    scores = np.asarray(result.inference)
    return {"name": ["low", "mid", "high"][int(scores.argmax())], "top": float(scores.max())}


def broken_postprocess(result: PredictionResult) -> dict[str, Any]:
    """postprocess that fails on rows whose id is odd."""
    if result.example.id % 2:
        raise RuntimeError(f"cannot describe row {result.example.id}")
    return {"ok": True}


def threads_in_use(result: PredictionResult) -> dict[str, Any]:
    """postprocess: how many intra-op threads torch uses on this worker."""
    return {"threads": torch.get_num_threads()}


def sklearn_handler(model_uri: str) -> SklearnModelHandlerNumpy:
    """handler factory for framework='custom'."""
    return SklearnModelHandlerNumpy(model_uri)


def not_a_handler(model_uri: str) -> str:
    return "this is not a ModelHandler"


# Awkward models: what a signature must read off the model, not guess.

class HeadFirst(torch.nn.Module):
    """Declares its head (a Linear) before its body (an Embedding)."""

    def __init__(self, vocab: int = VOCAB, dim: int = 8, classes: int = 3):
        super().__init__()
        self.head = torch.nn.Linear(dim, classes)
        self.embed = torch.nn.Embedding(vocab, dim, padding_idx=0)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = (tokens != 0).unsqueeze(-1).float()
        return self.head((self.embed(tokens) * mask).sum(1) / mask.sum(1).clamp(min=1.0))


class PadOne(torch.nn.Module):
    """RoBERTa-style: token 1 is padding (0 is a real token)."""

    def __init__(self, vocab: int = VOCAB, dim: int = 8, classes: int = 3):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim, padding_idx=1)
        self.head = torch.nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = (tokens != 1).unsqueeze(-1).float()
        return self.head((self.embed(tokens) * mask).sum(1) / mask.sum(1).clamp(min=1.0))


class SoftmaxMLP(torch.nn.Module):
    """Ends in a Softmax: its outputs are probabilities already."""

    def __init__(self, n_features: int = N_FEATURES, classes: int = 3):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(n_features, 16), torch.nn.ReLU(),
                                       torch.nn.Linear(16, classes), torch.nn.Softmax(dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Regressor(torch.nn.Module):
    """One output per row: a regression value (or a binary logit; the model cannot say)."""

    def __init__(self, n_features: int = N_FEATURES):
        super().__init__()
        self.linear = torch.nn.Linear(n_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class DictOutput(torch.nn.Module):
    """Returns a dict of named arrays."""

    def __init__(self, n_features: int = N_FEATURES):
        super().__init__()
        self.linear = torch.nn.Linear(n_features, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.linear(x)
        return {"logits": y, "embedding": x[:, :2] * 2}


class TwoInputs(torch.nn.Module):
    def __init__(self, n_features: int = N_FEATURES):
        super().__init__()
        self.linear = torch.nn.Linear(n_features, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.linear(x * mask)


class Scaled(torch.nn.Module):
    """forward takes a keyword argument: inference_args={"scale": ...}."""

    def __init__(self, n_features: int = N_FEATURES):
        super().__init__()
        self.linear = torch.nn.Linear(n_features, 2)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return self.linear(x) * scale


def save_module(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    model.eval()
    torch.save(model.state_dict(), path)
    return model


def named_fields(result: PredictionResult) -> dict[str, Any]:
    """postprocess for output='named': picks fields of the model's dict."""
    out = result.inference
    return {"top": int(np.asarray(out["logits"]).argmax()),
            "first": float(np.asarray(out["embedding"])[0])}


def inference_kind(result: PredictionResult) -> dict[str, Any]:
    """postprocess: what the model output is (for sklearn: predict_proba or predict)."""
    return {"values": [float(v) for v in np.atleast_1d(np.asarray(result.inference))]}


def hooked_sklearn_handler(model_uri: str) -> Any:
    """A handler built with Beam's hooks: each must be honoured."""
    import os

    base = SklearnModelHandlerNumpy(model_uri, env_vars={"CROSSINFER_TEST_ENV": "set"})
    return (base.with_preprocess_fn(lambda x: x * 0.0 + 1.0)
            .with_postprocess_fn(lambda r: PredictionResult(
                r.example, {"label": int(r.inference), "env": os.environ.get(
                    "CROSSINFER_TEST_ENV", "unset")}, r.model_id)))


def hooked_fields(result: PredictionResult) -> dict[str, Any]:
    return {"label": result.inference["label"], "env": result.inference["env"],
            "first": float(np.asarray(result.example.features)[0])}


def torch_tensor_handler(model_uri: str) -> Any:
    from apache_beam.ml.inference.pytorch_inference import PytorchModelHandlerTensor

    return PytorchModelHandlerTensor(state_dict_path=model_uri, model_class=MLP,
                                     model_params={})


class MeanEmbeddingNoPadIdx(torch.nn.Module):
    """Averages every token, padding included: no pad value leaves its output alone."""

    def __init__(self, vocab: int = VOCAB, dim: int = 8, classes: int = 2):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.head = torch.nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(tokens).mean(1))


def keyed_tensors(row: Any) -> dict[str, Any]:
    """preprocess returning a dict of tensors (what a keyed-tensor handler takes)."""
    return {"x": torch.tensor(row.features)}


# Beam's own RunInference test models, for tests/test_beam_scenarios.py.

class LinearRegression(torch.nn.Module):
    """Beam's PytorchLinearRegression: forward and a 'generate' method (+0.5)."""

    def __init__(self, input_dim: int = 1, output_dim: int = 1):
        super().__init__()
        self.linear = torch.nn.Linear(input_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)

    def generate(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + 0.5


class LinearRegressionDict(LinearRegression):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.linear(x)
        return {"output1": out, "output2": out}


class LinearRegressionExtraArgs(LinearRegression):
    """Beam's keyed model with non-batchable extra args, as one input plus inference_args."""

    def forward(self, x: torch.Tensor, prediction_param_array: Any = None,
                prediction_param_bool: bool = False) -> torch.Tensor:
        if not prediction_param_bool:
            raise ValueError("Expected prediction_param_bool to be True")
        if not all(prediction_param_array):
            raise ValueError("Expected prediction_param_array to be all True")
        return self.linear(x)


class KeyedLinear(torch.nn.Module):
    """forward(k1, k2): Beam's keyed-tensor scenario (custom handler only)."""

    def __init__(self, input_dim: int = 1, output_dim: int = 1):
        super().__init__()
        self.linear = torch.nn.Linear(input_dim, output_dim)

    def forward(self, k1: torch.Tensor, k2: torch.Tensor) -> torch.Tensor:
        return self.linear(k1) + self.linear(k2)


class SumModel:
    """Beam's sklearn FakeModel: predict sums each row, counting its calls."""

    calls = 0

    def __init__(self, n_features: int = 3):
        self.n_features_in_ = n_features

    def predict(self, x: np.ndarray) -> np.ndarray:
        SumModel.calls += 1
        return np.sum(x, axis=1)


def generate_handler(model_uri: str) -> Any:
    """Beam's make_tensor_model_fn('generate') scenario."""
    from apache_beam.ml.inference.pytorch_inference import (
        PytorchModelHandlerTensor, make_tensor_model_fn)

    return PytorchModelHandlerTensor(state_dict_path=model_uri, model_class=LinearRegression,
                                     model_params={"input_dim": 1, "output_dim": 1},
                                     inference_fn=make_tensor_model_fn("generate"))


def keyed_handler(model_uri: str) -> Any:
    from apache_beam.ml.inference.pytorch_inference import PytorchModelHandlerKeyedTensor

    return PytorchModelHandlerKeyedTensor(state_dict_path=model_uri, model_class=KeyedLinear,
                                          model_params={"input_dim": 1, "output_dim": 1})


def two_keys(row: Any) -> dict[str, Any]:
    """preprocess for the keyed handler: a dict of tensors."""
    return {"k1": torch.tensor([float(row.k1)]), "k2": torch.tensor([float(row.k2)])}


def first_value(result: PredictionResult) -> dict[str, Any]:
    return {"value": float(np.asarray(result.inference).ravel()[0])}


def named_pair(result: PredictionResult) -> dict[str, Any]:
    out = result.inference
    return {"output1": float(np.asarray(out["output1"]).ravel()[0]),
            "output2": float(np.asarray(out["output2"]).ravel()[0])}
