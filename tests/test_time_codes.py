"""What the time codes do at more frames than a model trained on: they index frames (extrapolate), they neither
interpolate nor rescale to the clip; learned rows past the trained length stay zero."""

from __future__ import annotations

import pytest
import torch

from simvlg_video.adapters.time_encoding import TimeEncoding
from simvlg_video.adapters.token_pool import TemporalTokenPool


@pytest.mark.parametrize("kind", ["sinusoidal", "learned"])
def test_more_frames_keep_the_first_frames_codes_and_add_new_ones(kind: str) -> None:
    torch.manual_seed(0)
    encoding = TimeEncoding(kind, dim=16, max_frames=64)
    if kind == "learned":
        torch.nn.init.normal_(encoding.table)
    four, sixteen = encoding(4), encoding(16)
    torch.testing.assert_close(sixteen[:4], four)  # frame k keeps code k: not rescaled to the clip
    assert not torch.allclose(sixteen[4:8], four)  # frames 4-7 get new codes: not interpolated between 0-3
    with pytest.raises(ValueError, match="max_frames"):
        encoding(65)


def test_learned_codes_past_the_trained_length_stay_zero_so_those_frames_have_no_time_code() -> None:
    torch.manual_seed(0)
    pool = TemporalTokenPool(
        dim=16, num_heads=2, num_output_tokens=None, time_encoding="learned", max_frames=64, space_encoding="none"
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
