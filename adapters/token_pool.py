"""Soft attentive temporal merging of per-frame *merged* tokens (the `merged_tokens` placement).

Each frame goes through the frozen ViT and the ToMe connector on its own, giving T sets of M merged tokens. Merged
tokens of different frames do not correspond position by position, so this module lets every output token attend over
all frames' tokens: queries come from the time-averaged tokens, keys and values from every frame's tokens (plus frame
codes when time encoding is on, and codes of where each merged token sits in its frame when space encoding is on:
ToMe merging keeps no token grid, so without them a shape's place, and with it any left/right/up/down motion, is
nearly gone), several heads. The result is added to the plain time average through the output
projection, which is the gate: it starts at zero (weight and bias), so at initialisation the module is the average
and on a static clip the model is the image model. A zero matrix rather than a zero scalar in front of a random
projection, because it opens from the first step: its gradient is the correlation of the loss gradient with the
attention output, where a scalar's is a projection of it onto random directions (a scalar gate moved from 0 to
-0.02 in 600 steps of the shapes demo, leaving the model an average of frames).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from simvlg_video.adapters.time_encoding import SPACE_ENCODINGS, TimeEncoding, sinusoidal_2d
from simvlg_video.model.adapter_protocol import AttentionMap, AttentionSwitches
from simvlg_video.model.tome import bipartite_soft_matching, max_merge_count


def merge_to_count(tokens: torch.Tensor, count: int) -> torch.Tensor:
    """Reduce (B, M, D) tokens to (B, count, D) by repeated bipartite soft matching (plain mean, CLS protected)."""
    while tokens.shape[1] > count:
        r = min(tokens.shape[1] - count, max_merge_count(tokens.shape[1]))
        if r < 1:
            raise ValueError(f"cannot merge {tokens.shape[1]} tokens down to {count}")
        tokens, _ = bipartite_soft_matching(tokens, r)(tokens, mode="mean")
    return tokens


class TemporalTokenPool(AttentionSwitches, nn.Module):
    """(B, T, M, D) per-frame merged tokens -> (B, K, D) soft prompt tokens; K = `num_output_tokens` or M.

    A time-pooling stage of the captioner (it pools the connector's per-frame outputs, see `pools_vit_tokens`) and an
    adapter (see `simvlg_video.model.adapter_protocol`).
    """

    pools_vit_tokens = False  # pools the connector's merged tokens of every frame, not the ViT's tokens

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_output_tokens: int | None,
        time_encoding: str,
        max_frames: int,
        space_encoding: str,
    ):
        super().__init__()
        if space_encoding not in SPACE_ENCODINGS:
            raise ValueError(f"space_encoding must be one of {SPACE_ENCODINGS}, got {space_encoding!r}")
        if dim % num_heads:
            raise ValueError(f"TemporalTokenPool: dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.dim, self.num_heads, self.num_output_tokens = dim, num_heads, num_output_tokens
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)  # the gate onto the average: zero at initialisation
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.time = TimeEncoding(time_encoding, dim, max_frames)
        self.space_encoding = space_encoding
        # AttentionSwitches: `plain` (plain attention: benchmarks, FLOP counting) and `recording` keep
        # `last_attention`, here (B, heads, K, T * M).

    def no_decay_params(self) -> list[str]:
        """The output gate (zero at the start: decay would hold it shut), biases and the frame-code table."""
        return [name for name, p in self.named_parameters() if p.ndim < 2 or name.startswith(("out.", "time."))]

    def attention_map(self) -> AttentionMap | None:
        """How much each output token of the first clip draws from each frame (heads averaged, rows sum to 1)."""
        if self.last_attention is None:
            return None
        per_frame = self.last_attention[0].mean(dim=0).sum(dim=-1)
        return AttentionMap(per_frame, "share of each output token's attention on each frame", "output token")

    @property
    def uses_positions(self) -> bool:
        """Whether `forward` needs the merged tokens' positions in the frame."""
        return self.space_encoding != "none"

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, M, D) tokens (+ their (B, T, M, 2) positions in the frame with a space encoding) -> (B, K, D)."""
        if tokens.dim() != 4 or tokens.shape[-1] != self.dim:
            raise ValueError(f"TemporalTokenPool expects (B, T, M, {self.dim}) tokens, got {tuple(tokens.shape)}")
        if self.uses_positions and (positions is None or positions.shape != (*tokens.shape[:3], 2)):
            found = None if positions is None else tuple(positions.shape)
            raise ValueError(
                f"space_encoding={self.space_encoding!r} needs (B, T, M, 2) = "
                f"{(*tokens.shape[:3], 2)} token positions, got {found}"
            )
        batch, num_frames, num_tokens, _ = tokens.shape
        average = tokens.mean(dim=1)
        if self.num_output_tokens is not None and self.num_output_tokens != num_tokens:
            if self.num_output_tokens > num_tokens:
                raise ValueError(f"num_output_tokens={self.num_output_tokens} exceeds the {num_tokens} merged tokens")
            average = merge_to_count(average, self.num_output_tokens)
        source, query_source = tokens, average
        codes = self.time(num_frames)
        if codes is not None:
            source = source + codes[None, :, None, :].to(tokens.dtype)
        if self.uses_positions:  # where each merged token is: lets attention match and compare places across frames
            places = sinusoidal_2d(positions, self.dim).to(tokens.dtype)
            source = source + places
            if self.num_output_tokens is None or self.num_output_tokens == num_tokens:
                query_source = average + places.mean(dim=1)
        source = source.reshape(batch, num_frames * num_tokens, self.dim)

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

        query, key, value = heads(self.query(query_source)), heads(self.key(source)), heads(self.value(source))
        if self.recording or self.plain:
            weights = (query @ key.transpose(-2, -1) * query.shape[-1] ** -0.5).softmax(dim=-1)
            if self.recording:
                self.last_attention = weights.detach().unflatten(-1, (num_frames, num_tokens))
            mixed = weights @ value
        else:
            mixed = F.scaled_dot_product_attention(query, key, value)
        return average + self.out(mixed.transpose(1, 2).flatten(2))

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, num_output_tokens={self.num_output_tokens}, "
            f"space={self.space_encoding}"
        )
