"""Frame codes at other frame counts than trained on: clip-time codes put a frame at its moment in the clip, so the
same moment gets the same code at any T and moments between trained frames get codes between theirs; index codes
extrapolate by index (learned rows past the trained length stay zero)."""

from __future__ import annotations

import pytest
import torch

from simvlg_video.adapters.position_codes import FrameCodes, clip_times
from simvlg_video.adapters.token_pool import TemporalTokenPool


def test_clip_time_codes_give_the_same_moment_the_same_code_at_any_frame_count() -> None:
    codes = FrameCodes("clip_time", dim=16, max_frames=4)
    three, nine = codes(3), codes(9)
    torch.testing.assert_close(nine[1::3], three)  # frame k of 3 stands where frame 3k + 1 of 9 stands
    torch.testing.assert_close(clip_times(4), torch.tensor([0.125, 0.375, 0.625, 0.875]))
    assert codes(200).shape == (200, 16)  # no bound on the frame count: max_frames is for the index codes


def test_clip_time_codes_between_trained_frames_lie_between_their_codes() -> None:
    """At 16 frames each code is nearer to the codes of the two 8-frame moments around it than to any other."""
    eight, sixteen = FrameCodes("clip_time", dim=64, max_frames=64)(8), FrameCodes("clip_time", 64, 64)(16)
    distances = torch.cdist(sixteen, eight)  # (16, 8)
    nearest = distances.argmin(dim=1)
    torch.testing.assert_close(nearest, torch.arange(16) // 2)  # each 16-frame moment is nearest its own segment


@pytest.mark.parametrize("kind", ["frame_index", "learned_index"])
def test_index_codes_keep_the_first_frames_codes_and_add_new_ones(kind: str) -> None:
    torch.manual_seed(0)
    encoding = FrameCodes(kind, dim=16, max_frames=64)
    if kind == "learned_index":
        torch.nn.init.normal_(encoding.table)
    four, sixteen = encoding(4), encoding(16)
    torch.testing.assert_close(sixteen[:4], four)  # frame k keeps code k: not rescaled to the clip
    assert not torch.allclose(sixteen[4:8], four)  # frames 4-7 get new codes: not interpolated between 0-3
    with pytest.raises(ValueError, match="max_frames"):
        encoding(65)


def test_learned_index_codes_past_the_trained_length_stay_zero_so_those_frames_have_no_time_code() -> None:
    torch.manual_seed(0)
    pool = TemporalTokenPool(
        dim=16,
        num_heads=2,
        num_prompt_tokens=None,
        time_encoding="learned_index",
        max_frames=64,
        space_encoding="none",
        queries="frame_average",
    )
    torch.nn.init.normal_(pool.out.weight)  # an opened gate, as after training
    optimizer = torch.optim.AdamW(pool.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(5):  # training at T = 4
        optimizer.zero_grad()
        pool(torch.randn(2, 4, 5, 16)).square().mean().backward()
        optimizer.step()
    table = pool.time.table.detach()
    assert table[:4].abs().min() > 0 and torch.count_nonzero(table[4:]) == 0
    assert any(name.startswith("time.") for name in pool.no_decay_params())  # nothing decays them either


def test_a_pool_with_clip_time_codes_reads_a_clip_at_twice_its_frames_as_at_its_frames() -> None:
    """Each frame of a T-frame clip shown twice (2T frames, its moments split in two) gives nearly the pool output of
    the T-frame clip with clip-time codes; with index codes the second half of the frames reads as other moments."""
    torch.manual_seed(0)
    tokens, clip_view = torch.randn(2, 4, 5, 16), torch.randn(2, 5, 16)
    doubled = tokens.repeat_interleave(2, dim=1)
    gaps = {}
    for kind in ("clip_time", "frame_index"):
        torch.manual_seed(1)
        pool = TemporalTokenPool(16, 2, None, kind, 64, "none", "clip_view")
        torch.nn.init.normal_(pool.out.weight)
        with torch.no_grad():
            gaps[kind] = (pool(doubled, clip_view=clip_view) - pool(tokens, clip_view=clip_view)).abs().mean().item()
    assert gaps["clip_time"] < 0.5 * gaps["frame_index"], gaps
