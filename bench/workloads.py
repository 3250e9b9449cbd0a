"""The workloads W1-W5 and how many rows each system gets (full and --quick)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    title: str
    model: str  # key in data.build_models(): sklearn, mlp, onnx, seq
    data: str  # key in pipes.DATA: features or sequences
    rows: int


WORKLOADS = {
    "W1": Workload("W1", "sklearn LogisticRegression, 32 features", "sklearn", "features", 200_000),
    "W2": Workload("W2", "torch MLP 32-256-256-2", "mlp", "features", 200_000),
    "W3": Workload("W3", "the W2 MLP as ONNX (onnxruntime)", "onnx", "features", 200_000),
    "W4": Workload("W4", "token sequences, lengths 1-512 heavy-tailed, torch embedding model",
                   "seq", "sequences", 200_000),
    "W5": Workload("W5", "W2 through the Java pipeline vs the Python pipeline", "mlp",
                   "features", 200_000),
}
