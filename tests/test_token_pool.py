"""The merged-token temporal pool on its own: shapes, identity at a zero gate (its start: the clip view or the frame
average), output-token reduction, gradients."""

from __future__ import annotations

import pytest
import torch

from simvlg_video.adapters.position_codes import clip_times, span_means
from simvlg_video.adapters.token_pool import TemporalTokenPool, merge_to_count


def make_pool(dim: int, **settings) -> TemporalTokenPool:
    """A pool without codes, starting from the frame average, unless asked for (the placement, MergedTokens, turns
    codes on and starts from the clip view)."""
    return TemporalTokenPool(
        dim,
        **{
            "num_heads": 8,
            "num_prompt_tokens": None,
            "time_encoding": "none",
            "max_frames": 64,
            "space_encoding": "none",
            "queries": "frame_average",
            **settings,
        },
    )


def test_zero_output_gate_is_the_time_average():
    pool = make_pool(dim=32, num_heads=4, time_encoding="clip_time")
    tokens = torch.randn(3, 5, 9, 32)
    torch.testing.assert_close(pool(tokens), tokens.mean(dim=1), rtol=0, atol=0)


def test_zero_output_gate_is_the_clip_view_which_the_pool_needs_with_its_places():
    """Started from the clip view (the connector's tokens of the time-averaged ViT tokens) the pool returns it."""
    torch.manual_seed(0)
    pool = make_pool(dim=16, num_heads=2, queries="clip_view", time_encoding="clip_time", space_encoding="sinusoidal")
    tokens, positions = torch.randn(2, 3, 7, 16), torch.rand(2, 3, 7, 2)
    clip_view, clip_positions = torch.randn(2, 7, 16), torch.rand(2, 7, 2)
    torch.testing.assert_close(pool(tokens, positions, clip_view, clip_positions), clip_view, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"needs clip_view of shape \(2, 7, 16\)"):
        pool(tokens, positions)
    with pytest.raises(ValueError, match=r"needs clip_positions of shape \(2, 7, 2\)"):
        pool(tokens, positions, clip_view)
    pool.out.weight.data.normal_()  # once open, the clip view's places steer the queries
    moved = clip_positions.flip(1)
    assert (
        pool(tokens, positions, clip_view, clip_positions) - pool(tokens, positions, clip_view, moved)
    ).abs().max() > 1e-3


def test_the_prompt_keeps_its_token_count_whatever_the_number_of_frames():
    pool = make_pool(dim=16, num_heads=2, queries="clip_view", time_encoding="clip_time")
    pool.out.weight.data.normal_()
    clip_view = torch.randn(2, 7, 16)
    for num_frames in (1, 4, 8, 32):
        assert pool(torch.randn(2, num_frames, 7, 16), clip_view=clip_view).shape == (2, 7, 16)


def test_fewer_output_tokens_merge_the_average():
    tokens = torch.randn(2, 4, 29, 16)
    pool = make_pool(dim=16, num_heads=2, num_prompt_tokens=10)
    out = pool(tokens)
    assert out.shape == (2, 10, 16)
    torch.testing.assert_close(out, merge_to_count(tokens.mean(dim=1), 10))
    assert merge_to_count(tokens.mean(dim=1), 10)[:, 0].equal(tokens.mean(dim=1)[:, 0])  # CLS is never merged


def test_more_output_tokens_than_merged_tokens_is_an_error():
    with pytest.raises(ValueError, match="exceeds the 9 merged tokens"):
        make_pool(dim=16, num_heads=2, num_prompt_tokens=12)(torch.randn(1, 2, 9, 16))


def test_attention_weights_are_recorded_per_frame_and_every_parameter_learns():
    pool = make_pool(dim=16, num_heads=2, time_encoding="learned_index")
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
    pool = make_pool(dim=16, num_heads=2, time_encoding="clip_time")
    pool(torch.randn(2, 3, 7, 16)).square().sum().backward()
    assert pool.out.weight.grad.abs().sum() > 0 and pool.out.bias.grad.abs().sum() > 0
    assert all(param.grad.abs().sum() == 0 for name, param in pool.named_parameters() if not name.startswith("out."))


def test_space_encoding_needs_positions_and_uses_them():
    pool = make_pool(dim=16, num_heads=2, space_encoding="sinusoidal")
    pool.out.weight.data.normal_()
    tokens = torch.randn(2, 3, 7, 16)
    with pytest.raises(ValueError, match=r"needs positions of shape \(2, 3, 7, 2\)"):
        pool(tokens)
    positions = torch.rand(2, 3, 7, 2)
    moved = positions.clone()
    moved[:, :, 1:, 0] = 1 - moved[:, :, 1:, 0]  # the same tokens elsewhere in the frame (CLS stays put)
    assert (pool(tokens, positions) - pool(tokens, moved)).abs().max() > 1e-3


def test_spans_average_consecutive_frames_and_stand_at_their_middle():
    tokens = torch.arange(6.0).view(1, 6, 1, 1).expand(2, 6, 3, 4)  # frame k holds the value k
    means, times, span_of = span_means(tokens, 4)  # 6 frames into 4 spans: frames 0-1, 2, 3-4, 5
    assert span_of.tolist() == [0, 0, 1, 2, 2, 3]
    torch.testing.assert_close(means[0, :, 0, 0], torch.tensor([0.5, 2.0, 3.5, 5.0]))
    torch.testing.assert_close(times, torch.tensor([1 / 6, 5 / 12, 2 / 3, 11 / 12]))  # mean of (k + 0.5) / 6
    same, frame_times, _ = span_means(tokens, 8)  # more spans than frames: every frame its own span
    assert same.equal(tokens) and torch.allclose(frame_times, clip_times(6))


def test_a_pool_of_spans_reads_span_views_at_their_moments_and_draws_each_frame():
    torch.manual_seed(0)
    pool = make_pool(dim=16, num_heads=2, queries="clip_view", time_encoding="clip_time", spans=2)
    pool.out.weight.data.normal_()
    vit_tokens = torch.randn(2, 4, 9, 16)
    views, times = pool.frame_views(vit_tokens)
    torch.testing.assert_close(views, torch.stack([vit_tokens[:, :2].mean(1), vit_tokens[:, 2:].mean(1)], dim=1))
    torch.testing.assert_close(times, torch.tensor([0.25, 0.75]))
    every_frame = make_pool(dim=16, num_heads=2, queries="clip_view", time_encoding="clip_time")
    every_frame.load_state_dict(pool.state_dict())
    clip_view = torch.randn(2, 7, 16)
    connected = torch.randn(2, 2, 7, 16)  # what the connector makes of the two views
    two_frames = every_frame(connected, clip_view=clip_view)  # two evenly spread frames stand where two spans do
    torch.testing.assert_close(pool(connected, clip_view=clip_view, times=times), two_frames)
    pool.record_attention(True)
    pool(connected, clip_view=clip_view, times=times)
    shares = pool.attention_map().weights  # (output tokens, frames): a span's share split over its frames
    assert shares.shape == (7, 4) and torch.allclose(shares[:, 0], shares[:, 1])
    torch.testing.assert_close(shares.sum(dim=1), torch.ones(7))
