"""The benchmark's models: real torch modules, importable by name (``bench.models:MLP``).

The expansion service is started with ``--allow 'bench.*'`` so a Java pipeline can name them.
"""

from __future__ import annotations

import torch

from bench.data import N_FEATURES, VOCAB


class MLP(torch.nn.Module):
    """W2/W3/W5: 32-256-256-2, ReLU."""

    def __init__(self, n_features: int = N_FEATURES, hidden: int = 256, classes: int = 2):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(n_features, hidden), torch.nn.ReLU(),
            torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
            torch.nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SeqModel(torch.nn.Module):
    """W4: token ids (batch, length) -> 2 logits; masked mean of embeddings, then an MLP.

    Token 0 is padding and is ignored, so padding never changes a prediction.
    """

    def __init__(self, vocab: int = VOCAB, dim: int = 64, hidden: int = 64, classes: int = 2):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim, padding_idx=0)
        self.head = torch.nn.Sequential(
            torch.nn.Linear(dim, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, classes))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = (tokens != 0).unsqueeze(-1).to(torch.float32)
        pooled = (self.embed(tokens) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(pooled)
