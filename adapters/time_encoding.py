"""Frame position codes: what lets a temporal module tell frame 0 from frame T-1 (the reference has none).

Codes are added to the tokens a temporal module reads, never to the residual stream itself, so a module whose gate is
0 stays the identity whatever the codes are.

A code marks a frame's *index* in the sampled clip, not its time: frame k gets row k whatever T and the clip's length.
So at more frames than trained on (trained at T = 4, evaluated at T = 8 or 16) the codes neither interpolate nor rescale
to the clip: frames 0-3 keep the codes that meant "the whole clip, first to last" in training but now cover its first
quarter or half, and frames 4 and on get codes training never showed. Sinusoidal codes extrapolate along their fixed
sine curves; learned rows past the trained T never had a gradient (and are exempt from weight decay), so they are still
the zero they started as: those frames carry no time code at all. (tests/test_time_codes.py; measured in
docs/experiments.md, "Time beyond direction".)
"""

from __future__ import annotations

import math

import torch
from torch import nn

TIME_ENCODINGS = ("none", "learned", "sinusoidal")
SPACE_ENCODINGS = ("none", "sinusoidal")


def sinusoidal_table(num_positions: int, dim: int) -> torch.Tensor:
    """The Transformer's fixed sine/cosine codes, (num_positions, dim)."""
    position = torch.arange(num_positions, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(num_positions, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return table


def sinusoidal_2d(positions: torch.Tensor, dim: int, scale: float = 32.0) -> torch.Tensor:
    """Codes of continuous (x, y) positions in [0, 1], (..., 2) -> (..., dim): sine/cosine codes of x in the first
    half of the channels and of y in the second, at `scale` positions per unit (so nearby places get close codes)."""
    if dim % 4:
        raise ValueError(f"sinusoidal_2d needs dim divisible by 4, got {dim}")
    quarter = dim // 4
    frequency = torch.exp(
        torch.arange(quarter, device=positions.device, dtype=torch.float32) * (-math.log(10000.0) / quarter)
    )
    angles = positions.float()[..., None] * scale * frequency  # (..., 2, quarter)
    codes = torch.cat([angles.sin(), angles.cos()], dim=-1)  # (..., 2, dim / 2)
    return codes.flatten(-2)


class TimeEncoding(nn.Module):
    """`kind` = none (no codes: the reference), learned (a zero-initialised table) or sinusoidal (fixed)."""

    def __init__(self, kind: str, dim: int, max_frames: int, device: torch.device | str | None = None):
        super().__init__()
        if kind not in TIME_ENCODINGS:
            raise ValueError(f"time_encoding must be one of {TIME_ENCODINGS}, got {kind!r}")
        self.kind, self.max_frames = kind, max_frames
        if kind == "learned":
            self.table = nn.Parameter(torch.zeros(max_frames, dim, device=device))
        elif kind == "sinusoidal":
            self.register_buffer("table", sinusoidal_table(max_frames, dim).to(device), persistent=False)
        else:
            self.table = None

    def forward(self, num_frames: int) -> torch.Tensor | None:
        """Codes for frames 0..num_frames-1, (T, dim); None when there are none."""
        if self.table is None:
            return None
        if num_frames > self.max_frames:
            raise ValueError(f"clips of {num_frames} frames exceed max_frames={self.max_frames} of the time encoding")
        return self.table[:num_frames]

    def extra_repr(self) -> str:
        return f"kind={self.kind}, max_frames={self.max_frames}"
