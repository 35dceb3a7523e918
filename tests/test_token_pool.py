"""The merged-token temporal pool on its own: shapes, identity at a zero gate, output-token reduction, gradients."""

from __future__ import annotations

import pytest
import torch

from simvlg_video.adapters.token_pool import TemporalTokenPool, merge_to_count


def make_pool(dim: int, **settings) -> TemporalTokenPool:
    """A pool without codes unless asked for (the placement, MergedTokens, turns both on)."""
    return TemporalTokenPool(
        dim,
        **{
            "num_heads": 8,
            "num_output_tokens": None,
            "time_encoding": "none",
            "max_frames": 64,
            "space_encoding": "none",
            **settings,
        },
    )


def test_zero_output_gate_is_the_time_average():
    pool = make_pool(dim=32, num_heads=4, time_encoding="sinusoidal")
    tokens = torch.randn(3, 5, 9, 32)
    torch.testing.assert_close(pool(tokens), tokens.mean(dim=1), rtol=0, atol=0)


def test_fewer_output_tokens_merge_the_average():
    tokens = torch.randn(2, 4, 29, 16)
    pool = make_pool(dim=16, num_heads=2, num_output_tokens=10)
    out = pool(tokens)
    assert out.shape == (2, 10, 16)
    torch.testing.assert_close(out, merge_to_count(tokens.mean(dim=1), 10))
    assert merge_to_count(tokens.mean(dim=1), 10)[:, 0].equal(tokens.mean(dim=1)[:, 0])  # CLS is never merged


def test_more_output_tokens_than_merged_tokens_is_an_error():
    with pytest.raises(ValueError, match="exceeds the 9 merged tokens"):
        make_pool(dim=16, num_heads=2, num_output_tokens=12)(torch.randn(1, 2, 9, 16))


def test_attention_weights_are_recorded_per_frame_and_every_parameter_learns():
    pool = make_pool(dim=16, num_heads=2, time_encoding="learned")
    pool.out.weight.data.normal_()
    pool.time.table.data.normal_()
    pool.record_attention(True)
    out = pool(torch.randn(2, 3, 7, 16))
    assert pool.last_attention.shape == (2, 2, 7, 3, 7)  # batch, heads, queries, frames, tokens per frame
    torch.testing.assert_close(pool.last_attention.sum(dim=(-2, -1)), torch.ones(2, 2, 7))
    out.square().sum().backward()
    for name, param in pool.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_the_zero_gate_learns_from_the_first_step():
    """At initialisation only the output projection gets a gradient, and it is not zero: the gate opens at once."""
    pool = make_pool(dim=16, num_heads=2, time_encoding="sinusoidal")
    pool(torch.randn(2, 3, 7, 16)).square().sum().backward()
    assert pool.out.weight.grad.abs().sum() > 0 and pool.out.bias.grad.abs().sum() > 0
    assert all(param.grad.abs().sum() == 0 for name, param in pool.named_parameters() if not name.startswith("out."))


def test_space_encoding_needs_positions_and_uses_them():
    pool = make_pool(dim=16, num_heads=2, space_encoding="sinusoidal")
    pool.out.weight.data.normal_()
    tokens = torch.randn(2, 3, 7, 16)
    with pytest.raises(ValueError, match=r"needs \(B, T, M, 2\)"):
        pool(tokens)
    positions = torch.rand(2, 3, 7, 2)
    moved = positions.clone()
    moved[:, :, 1:, 0] = 1 - moved[:, :, 1:, 0]  # the same tokens elsewhere in the frame (CLS stays put)
    assert (pool(tokens, positions) - pool(tokens, moved)).abs().max() > 1e-3
