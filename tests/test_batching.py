"""Padding and length buckets for variable-length inputs."""

from __future__ import annotations

import numpy as np
import pytest

from crossinfer import _batching


def test_stack_pads_with_zero_at_the_end():
    out = _batching.stack([np.array([1, 2, 3]), np.array([4])], pad=True)
    assert out.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert out.dtype == np.int64


def test_stack_refuses_to_pad_a_fixed_width_model():
    with pytest.raises(ValueError, match="different shapes"):
        _batching.stack([np.zeros(3), np.zeros(2)], pad=False)


def test_buckets_keep_padding_small_on_heavy_tailed_lengths():
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.pareto(1.2, size=512) * 20 + 1, 1, 512).astype(int).tolist()
    groups = _batching.length_buckets(lengths)
    assert sorted(i for g in groups for i in g) == list(range(512))
    padded, real = _batching.padding_waste(lengths, groups)
    # Each bucket wastes at most MAX_PADDING_SHARE of its tokens or PADDING_SLACK_TOKENS,
    # whichever is more: the bound length_buckets guarantees, checked bucket by bucket.
    for g in groups:
        g_padded, g_real = _batching.padding_waste(lengths, [g])
        assert g_padded - g_real <= max(_batching.MAX_PADDING_SHARE * g_real,
                                        _batching.PADDING_SLACK_TOKENS), g
    one_batch, _ = _batching.padding_waste(lengths, [list(range(512))])
    assert padded < one_batch / 3
    assert len(groups) < 40  # not one model call per row


def test_equal_lengths_stay_one_bucket():
    assert _batching.length_buckets([5] * 10) == [list(range(10))]
