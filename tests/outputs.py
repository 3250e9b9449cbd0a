"""Models with several outputs, named classes or extra arguments, and the named callables
the correctness tests (tests/test_outputs.py, tests/test_mistakes.py) refer to."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from apache_beam.ml.inference.base import PredictionResult
from sklearn.base import BaseEstimator

from tests import models


class TwoHeads(torch.nn.Module):
    """An actor-critic style module: forward returns (class logits, a value)."""

    def __init__(self, n_features: int = models.N_FEATURES, classes: int = 3):
        super().__init__()
        self.body = torch.nn.Linear(n_features, 16)
        self.policy = torch.nn.Linear(16, classes)
        self.value = torch.nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.body(x))
        return self.policy(h), self.value(h)


class ScaledMLP(models.MLP):
    """An MLP whose forward takes a second, keyword-only argument."""

    def forward(self, x: torch.Tensor, *, scale: float) -> torch.Tensor:
        return self.net(x) * scale


class PositionalScaledMLP(models.MLP):
    """An MLP whose forward takes a second positional argument."""

    def forward(self, x: torch.Tensor, scale: float) -> torch.Tensor:
        return self.net(x) * scale


class DictRegressor(BaseEstimator):
    """An estimator whose predict returns a dict of arrays (several targets by name)."""

    def fit(self, x: Any, y: Any = None) -> "DictRegressor":
        self.n_features_in_ = np.asarray(x).shape[1]
        self.offset_ = float(np.mean(x))
        return self

    def predict(self, x: Any) -> dict[str, np.ndarray]:
        x = np.asarray(x, dtype=np.float64)
        return {"mean": x.mean(axis=1) - self.offset_, "total": x.sum(axis=1)}


def policy_and_value(result: PredictionResult) -> dict[str, Any]:
    """postprocess for TwoHeads with output='named': both outputs, by position."""
    out = result.inference
    return {"action": int(np.asarray(out["0"]).argmax()), "value": float(np.asarray(out["1"])[0])}


def mean_and_total(result: PredictionResult) -> dict[str, Any]:
    out = result.inference
    return {"mean": float(out["mean"]), "total": float(out["total"])}


def a_float(result: PredictionResult) -> float:
    """postprocess that returns a bare float, not a dict."""
    return float(np.asarray(result.inference).max())


def wrong_fields(result: PredictionResult) -> dict[str, Any]:
    """postprocess whose fields are not those of its output_schema."""
    return {"top": float(np.asarray(result.inference).max())}


def env_scaled_features(row: Any) -> np.ndarray:
    """preprocess: features times CROSSINFER_TEST_SCALE, which env_vars sets on the worker."""
    return np.asarray(row.features, dtype=np.float32) * float(os.environ["CROSSINFER_TEST_SCALE"])


def float64_tensor_handler(model_uri: str) -> Any:
    """A custom PyTorch handler whose (float32) model is fed what the rows hold."""
    from apache_beam.ml.inference.pytorch_inference import PytorchModelHandlerTensor

    return PytorchModelHandlerTensor(state_dict_path=model_uri, model_class=models.MLP,
                                     model_params={})
