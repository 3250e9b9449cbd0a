"""Stacking a batch of model inputs: padding and length buckets for sequences."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# A bucket may waste this share of its tokens on padding, or this many tokens, whichever is
# more: tiny sequences are not worth a model call each.
MAX_PADDING_SHARE = 0.15
PADDING_SLACK_TOKENS = 64


def stack(xs: Sequence[np.ndarray], pad: bool, pad_value: float = 0,
          axis: int = 0) -> np.ndarray:
    """One array of shape (n, ...); inputs whose ``axis`` differs are padded with
    ``pad_value`` at its end (the model's signature says which axis and which value)."""
    first = xs[0].shape
    if all(x.shape == first for x in xs):
        return np.stack(xs)
    if not pad or len({x.ndim for x in xs}) != 1 or len(
            {x.shape[:axis] + x.shape[axis + 1:] for x in xs}) != 1:
        raise ValueError(
            "inputs of different shapes cannot form one batch: "
            f"{sorted({x.shape for x in xs})[:4]}")
    shape = list(first)
    shape[axis] = max(x.shape[axis] for x in xs)
    out = np.full((len(xs), *shape), pad_value, dtype=xs[0].dtype)
    for i, x in enumerate(xs):
        index = [slice(None)] * x.ndim
        index[axis] = slice(0, x.shape[axis])
        out[(i, *index)] = x
    return out


def length_buckets(lengths: Sequence[int]) -> list[list[int]]:
    """Indices grouped by similar length (shortest first) so padding stays small."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    groups: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in order:
        n = lengths[i]
        # Sorted ascending, so n is the padded length of the group if i joins it.
        waste = n * (len(current) + 1) - (real + n)
        if current and waste > max(MAX_PADDING_SHARE * (real + n), PADDING_SLACK_TOKENS):
            groups.append(current)
            current, real = [], 0
        current.append(i)
        real += n
    if current:
        groups.append(current)
    return groups


def equal_lengths(lengths: Sequence[int]) -> list[list[int]]:
    """Indices grouped by exactly equal length (shortest first): for a model whose output
    changes under any padding, so no row is padded."""
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(n, []).append(i)
    return [groups[n] for n in sorted(groups)]


def padding_waste(lengths: Sequence[int], groups: Sequence[Sequence[int]]) -> tuple[int, int]:
    """(padded tokens, real tokens) for these groups: a measure for benchmarks."""
    padded = sum(max(lengths[i] for i in g) * len(g) for g in groups)
    return padded, sum(lengths)
