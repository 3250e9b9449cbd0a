"""Synthetic data and real models, generated (never downloaded) from fixed seeds.

Features and token sequences are produced in chunks from a seed, so a pipeline source can
generate exactly the same rows as the raw loop without reading a file.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Iterator

import numpy as np


CHUNK = 8192  # rows generated per source step
MAX_LEN = 512
N_FEATURES = 32
VOCAB = 1000

# The data the pipeline sources emit; the worker fills it before the timed runs.
LOADED: dict = {}


def features(start: int, n: int, seed: int = 1) -> np.ndarray:
    """Rows [start, start + n) of the float32 feature matrix; chunk-aligned, reproducible."""
    out = np.empty((n, N_FEATURES), dtype=np.float32)
    done = 0
    while done < n:
        chunk, offset = divmod(start + done, CHUNK)
        block = np.random.default_rng([seed, chunk]).normal(size=(CHUNK, N_FEATURES))
        take = min(CHUNK - offset, n - done)
        out[done:done + take] = block[offset:offset + take]
        done += take
    return out


def feature_chunks(n: int, seed: int = 1) -> Iterator[tuple[int, np.ndarray]]:
    """(first row id, block) pairs covering rows [0, n)."""
    for start in range(0, n, CHUNK):
        yield start, features(start, min(CHUNK, n - start), seed)


def lengths(n: int, seed: int = 2) -> np.ndarray:
    """Heavy-tailed sequence lengths in [1, 512]: lognormal, median 20, mean about 40."""
    rng = np.random.default_rng([seed, 0])
    raw = rng.lognormal(mean=3.0, sigma=1.1, size=n)
    return np.clip(np.rint(raw), 1, MAX_LEN).astype(np.int64)


def sequences(start: int, n: int, seed: int = 2, total: int | None = None) -> list[np.ndarray]:
    """Token id sequences [start, start + n) (ids 1..VOCAB-1; 0 is padding)."""
    lens = lengths(max(total or 0, start + n), seed)[start:start + n]
    rng = np.random.default_rng([seed, 1, start])
    flat = rng.integers(1, VOCAB, size=int(lens.sum()), dtype=np.int64)
    cuts = np.cumsum(lens)[:-1]
    return np.split(flat, cuts)


def labels(x: np.ndarray) -> np.ndarray:
    return ((x[:, 0] + 0.5 * x[:, 1] - 0.3 * x[:, 2]) > 0).astype(np.int64)


def build_models(workdir: Path) -> dict[str, Path]:
    """Train/export every model once into ``workdir``; returns name -> path."""
    workdir.mkdir(parents=True, exist_ok=True)
    paths = {"sklearn": workdir / "logreg.pkl", "mlp": workdir / "mlp.pt",
             "onnx": workdir / "mlp.onnx", "seq": workdir / "seq.pt"}
    if all(p.exists() for p in paths.values()):
        return paths
    import torch
    from sklearn.linear_model import LogisticRegression

    x = features(0, 20000, seed=99)
    y = labels(x)
    with open(paths["sklearn"], "wb") as f:
        pickle.dump(LogisticRegression(max_iter=500).fit(x, y), f)

    torch.manual_seed(0)
    from bench.models import MLP, SeqModel

    mlp = MLP()
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for step in range(200):
        i = slice((step * 512) % 19968, (step * 512) % 19968 + 512)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(mlp(xt[i]), yt[i]).backward()
        opt.step()
    mlp.eval()
    torch.save(mlp.state_dict(), paths["mlp"])
    torch.onnx.export(mlp, (torch.zeros(2, N_FEATURES),), str(paths["onnx"]), dynamo=False,
                      input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})

    torch.manual_seed(1)
    seq = SeqModel().eval()  # random weights: the cost, not the accuracy, is measured
    torch.save(seq.state_dict(), paths["seq"])
    return paths


def write_jsonl(path: Path, n: int, seed: int = 1) -> Path:
    """The W5 input for the Java example pipeline: {"id": i, "features": [...]} per line."""
    if path.exists() and path.stat().st_size > 0:
        with open(path) as f:
            if sum(1 for _ in f) == n:
                return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for start, block in feature_chunks(n, seed):
            for i, row in enumerate(block.tolist()):
                f.write(json.dumps({"id": start + i, "features": row}))
                f.write("\n")
    return path


# The local runner the Java comparisons use: `python -m bench --runner` sets it for its workers.
RUNNER_ENV = "CROSSINFER_BENCH_RUNNER"


def local_runner() -> str:
    """``job-server`` (Beam's Python job server, the default) or ``prism``."""
    return os.environ.get(RUNNER_ENV, "job-server")
