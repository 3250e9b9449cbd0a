"""Real models that write down, across processes, each time they are loaded and called.

Sharing a model (large_model, model_copies) and batching are about how often a model is
loaded and with how many rows it is called, which its predictions cannot show. These models
append one line per event to the file named by CROSSINFER_TEST_RECORD (inherited by worker
processes and Beam's model server); unset, they record nothing.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
from sklearn.linear_model import LogisticRegression

from tests import models

RECORD = "CROSSINFER_TEST_RECORD"


def _note(event: str, rows: int = 0) -> None:
    path = os.environ.get(RECORD)
    if path:
        with open(path, "a", encoding="utf-8") as f:  # one short append: atomic
            f.write(f"{event} {os.getpid()} {rows}\n")


def events(path: Path) -> list[tuple[str, int, int]]:
    """(event, pid, rows) lines written so far."""
    if not path.exists():
        return []
    return [(e, int(pid), int(n)) for e, pid, n in
            (line.split() for line in path.read_text().splitlines())]


class RecordingLogReg(LogisticRegression):
    """LogisticRegression noting each unpickling (a load) and each predict_proba call."""

    def __setstate__(self, state: Any) -> None:
        _note("load")
        super().__setstate__(state)

    def predict_proba(self, X: Any) -> Any:
        _note("call", len(X))
        return super().predict_proba(X)


class RecordingMLP(models.MLP):
    """MLP noting each construction (a state_dict load builds one) and each call."""

    def __init__(self, **kwargs: Any) -> None:
        _note("load")
        super().__init__(**kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _note("call", len(x))
        return super().forward(x)


def train_logreg(path: Path) -> RecordingLogReg:
    x, y = models.dataset()
    model = RecordingLogReg(max_iter=500).fit(x, y)
    with open(path, "wb") as f:
        pickle.dump(model, f)
    return model


def train_mlp(path: Path) -> RecordingMLP:
    torch.manual_seed(0)
    saved = models.train_mlp(path)
    model = RecordingMLP()
    model.load_state_dict(saved.state_dict())
    return model.eval()
