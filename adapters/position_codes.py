"""Codes of when a frame is in its clip and where a token is in its frame: what lets a temporal module tell the
first frame from the last, and a shape's place from another's (the reference has neither).

Codes are added to what a temporal module reads, never to the residual stream, so a module whose gate is 0 stays the
identity whatever the codes are.

Frame codes (`FrameCodes`, `time_encoding=`):

* `clip_time` (the default): frame k of T stands at time t = (k + 0.5) / T of the sampled span, the middle of its
  segment, which is where uniform sampling takes it; its code is sinusoidal in t. The same code means the same
  moment at any T, so a model trained at 8 frames reads 16 or 4 frames on the same time axis (tests/test_time_codes.py).
  The frequencies are low (`CLIP_TIME_SCALE`): a code changes smoothly with t, so moments between the trained frames
  get codes between the trained ones.
* `frame_index`: frame k gets the Transformer's sinusoidal code of k, whatever T: at more frames than trained on the
  first frames keep the codes that meant the whole clip and later ones get codes training never showed.
* `learned_index`: a zero-initialised table, one row per frame index (rows past the trained T stay zero).
* `none`: no codes (the reference: blind to frame order).

Place codes (`place_codes`): sinusoidal codes of a token's (x, y) in the frame, for the merged-token pool.
"""

from __future__ import annotations

import math

import torch
from torch import nn

TIME_ENCODINGS = ("none", "clip_time", "frame_index", "learned_index")
SPACE_ENCODINGS = ("none", "sinusoidal")
CLIP_TIME_SCALE = 8.0  # radians per clip in the fastest channel: neighbouring frames of an 8-frame clip 1 rad apart


def sinusoidal_table(num_positions: int, dim: int) -> torch.Tensor:
    """The Transformer's fixed sine/cosine codes of positions 0..num_positions-1, (num_positions, dim)."""
    return sinusoidal_codes(torch.arange(num_positions, dtype=torch.float32), dim)


def sinusoidal_codes(positions: torch.Tensor, dim: int, scale: float = 1.0) -> torch.Tensor:
    """Sine/cosine codes of continuous positions, (...) -> (..., dim): channel pairs at geometrically falling
    frequencies (1 down to 1/10000 radians per unit, times `scale`), sines in even channels, cosines in odd ones."""
    frequency = torch.exp(
        torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) * (-math.log(10000.0) / dim)
    )
    angles = positions.float()[..., None] * scale * frequency
    codes = torch.zeros(*positions.shape, dim, device=positions.device)
    codes[..., 0::2] = angles.sin()
    codes[..., 1::2] = angles.cos()[..., : dim // 2]
    return codes


def clip_times(num_frames: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Where each of `num_frames` evenly spread frames stands in its clip: (k + 0.5) / T, the middle of segment k."""
    return (torch.arange(num_frames, dtype=torch.float32, device=device) + 0.5) / num_frames


def span_means(tokens: torch.Tensor, spans: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, T, ...) per-frame tokens -> their means over min(spans, T) consecutive spans of frames (frame k in span
    floor(k * S / T)), (B, S, ...); each span's moment in the clip (the mean clip time of its frames), (S,); and the
    span of each frame, (T,)."""
    num_frames = tokens.shape[1]
    count = min(spans, num_frames)
    span_of = torch.arange(num_frames, device=tokens.device) * count // num_frames
    sizes = torch.bincount(span_of, minlength=count)
    sums = tokens.new_zeros(tokens.shape[0], count, *tokens.shape[2:]).index_add_(1, span_of, tokens)
    means = sums / sizes.view(1, count, *[1] * (tokens.dim() - 2)).to(tokens.dtype)
    times = torch.zeros(count, device=tokens.device).index_add_(0, span_of, clip_times(num_frames, tokens.device))
    return means, times / sizes, span_of


def place_codes(positions: torch.Tensor, dim: int, scale: float = 32.0) -> torch.Tensor:
    """Codes of continuous (x, y) positions in [0, 1], (..., 2) -> (..., dim): sine/cosine codes of x in the first
    half of the channels and of y in the second, at `scale` positions per unit (so nearby places get close codes)."""
    if dim % 4:
        raise ValueError(f"place codes need dim divisible by 4, got {dim}")
    quarter = dim // 4
    frequency = torch.exp(
        torch.arange(quarter, device=positions.device, dtype=torch.float32) * (-math.log(10000.0) / quarter)
    )
    angles = positions.float()[..., None] * scale * frequency  # (..., 2, quarter)
    codes = torch.cat([angles.sin(), angles.cos()], dim=-1)  # (..., 2, dim / 2)
    return codes.flatten(-2)


class FrameCodes(nn.Module):
    """Codes of the frames of a T-frame clip, (T, dim), of the kind `kind` (see the module doc); `max_frames` bounds
    the index kinds only (clip time has no bound)."""

    def __init__(self, kind: str, dim: int, max_frames: int, device: torch.device | str | None = None):
        super().__init__()
        if kind not in TIME_ENCODINGS:
            raise ValueError(f"time_encoding must be one of {TIME_ENCODINGS}, got {kind!r}")
        self.kind, self.dim, self.max_frames = kind, dim, max_frames
        if kind == "learned_index":
            self.table = nn.Parameter(torch.zeros(max_frames, dim, device=device))
        elif kind == "frame_index":
            self.register_buffer("table", sinusoidal_table(max_frames, dim).to(device), persistent=False)
        else:
            self.table = None

    def forward(
        self, num_frames: int, device: torch.device | str | None = None, times: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """Codes for frames 0..num_frames-1 of one clip, (T, dim); None when there are none. `device`: where clip-time
        codes are computed (a table is where the module is); `times`: the rows' moments in the clip when they are not
        evenly spread frames (spans of frames: clip-time codes read them, index codes count the rows)."""
        if self.kind == "none":
            return None
        if self.kind == "clip_time":
            moments = clip_times(num_frames, device) if times is None else times.to(device)
            return sinusoidal_codes(moments, self.dim, CLIP_TIME_SCALE)
        if num_frames > self.max_frames:
            raise ValueError(f"clips of {num_frames} frames exceed max_frames={self.max_frames} of {self.kind} codes")
        return self.table[:num_frames]

    def extra_repr(self) -> str:
        return f"kind={self.kind}" + (f", max_frames={self.max_frames}" if self.table is not None else "")
