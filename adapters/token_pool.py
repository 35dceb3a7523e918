"""Soft attentive temporal merging of per-frame *merged* tokens (the `merged_tokens` placement).

Each frame goes through the frozen ViT and the ToMe connector on its own, giving T sets of M merged tokens. Merged
tokens of different frames do not correspond position by position, so this module lets every output token attend over
all frames' tokens: queries come from the time-averaged tokens, keys and values from every frame's tokens (plus frame
codes when time encoding is on), several heads. The result is added to the plain time average through a gate that
starts at 0, so at initialisation the module is the average, and on a static clip the model is the image model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from simvlg_video.adapters.time_encoding import TimeEncoding
from simvlg_video.model.tome import bipartite_soft_matching, max_merge_count


def merge_to_count(tokens: torch.Tensor, count: int) -> torch.Tensor:
    """Reduce (B, M, D) tokens to (B, count, D) by repeated bipartite soft matching (plain mean, CLS protected)."""
    while tokens.shape[1] > count:
        r = min(tokens.shape[1] - count, max_merge_count(tokens.shape[1]))
        if r < 1:
            raise ValueError(f"cannot merge {tokens.shape[1]} tokens down to {count}")
        tokens, _ = bipartite_soft_matching(tokens, r)(tokens, mode="mean")
    return tokens


class TemporalTokenPool(nn.Module):
    """(B, T, M, D) per-frame merged tokens -> (B, K, D) soft prompt tokens; K = `num_output_tokens` or M."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        num_output_tokens: int | None = None,
        time_encoding: str = "none",
        max_frames: int = 64,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"TemporalTokenPool: dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.dim, self.num_heads, self.num_output_tokens = dim, num_heads, num_output_tokens
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.gate = nn.Parameter(torch.zeros(()))
        self.time = TimeEncoding(time_encoding, dim, max_frames)
        self.record_attention = False  # keep the last attention weights (visualisation); off in training
        self.naive = False  # plain matmul-softmax-matmul instead of the fused kernel (benchmarks, FLOP counting)
        self.last_attention: torch.Tensor | None = None

    def adapter_params(self) -> list[str]:
        """Adapter protocol: every parameter of this module trains when adapters train."""
        return [name for name, _ in self.named_parameters()]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 4 or tokens.shape[-1] != self.dim:
            raise ValueError(f"TemporalTokenPool expects (B, T, M, {self.dim}) tokens, got {tuple(tokens.shape)}")
        batch, num_frames, num_tokens, _ = tokens.shape
        average = tokens.mean(dim=1)
        if self.num_output_tokens is not None and self.num_output_tokens != num_tokens:
            if self.num_output_tokens > num_tokens:
                raise ValueError(f"num_output_tokens={self.num_output_tokens} exceeds the {num_tokens} merged tokens")
            average = merge_to_count(average, self.num_output_tokens)
        codes = self.time(num_frames)
        source = tokens if codes is None else tokens + codes[None, :, None, :].to(tokens.dtype)
        source = source.reshape(batch, num_frames * num_tokens, self.dim)

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

        query, key, value = heads(self.query(average)), heads(self.key(source)), heads(self.value(source))
        if self.record_attention or self.naive:
            weights = (query @ key.transpose(-2, -1) * query.shape[-1] ** -0.5).softmax(dim=-1)
            if self.record_attention:
                self.last_attention = weights.detach().unflatten(-1, (num_frames, num_tokens))
            mixed = weights @ value
        else:
            mixed = F.scaled_dot_product_attention(query, key, value)
        mixed = self.out(mixed.transpose(1, 2).flatten(2))
        return average + self.gate * mixed

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, num_output_tokens={self.num_output_tokens}"
