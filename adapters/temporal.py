"""The reference temporal adapter: soft attentive merging of each spatial token across the frames of a clip.

Every token position attends over the same position in all T frames of its clip. Queries and keys are learned
(C -> qk_dim), the values are the tokens themselves, there is no output projection, and the result is added through
a scalar gate `alpha` that starts at 0, so a freshly added adapter is the identity.
"""

from __future__ import annotations

import torch
from torch import nn

from simvlg_video.adapters.position_codes import FrameCodes
from simvlg_video.model.adapter_protocol import AttentionMap, AttentionSwitches


class TemporalAttentionMerge(AttentionSwitches, nn.Module):
    """`x + alpha * attention over frames`, for tokens of shape (B*T, N, C) laid out clip by clip.

    Parameter names match the reference checkpoint (`query`, `key`, `alpha`). The attention logits are scaled by
    `qk_dim ** -0.5` (the full query width, as the reference does), not by the per-head width.
    """

    def __init__(
        self,
        dim: int,
        qk_dim: int,
        num_heads: int,
        time_encoding: str,
        max_frames: int,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        if qk_dim % num_heads or dim % num_heads:
            raise ValueError(
                f"TemporalAttentionMerge: qk_dim ({qk_dim}) and dim ({dim}) must both be divisible by "
                f"num_heads ({num_heads})"
            )
        self.dim = dim
        self.qk_dim = qk_dim
        self.num_heads = num_heads
        # Trainable, so fp32 whatever dtype the frozen block around it computes in.
        self.query = nn.Linear(dim, qk_dim, device=device, dtype=torch.float32)
        self.key = nn.Linear(dim, qk_dim, device=device, dtype=torch.float32)
        self.alpha = nn.Parameter(torch.zeros((), device=device, dtype=torch.float32))
        # Frame codes added to what queries, keys and values read (not to the residual): "none" is the reference.
        self.time = FrameCodes(time_encoding, dim, max_frames, device=device)
        # AttentionSwitches: `plain` (plain attention, benchmarks) and `recording` keep `last_attention`, here the
        # (T, T) frame-to-frame weights of the first clip averaged over tokens and heads.

    def no_decay_params(self) -> list[str]:
        """The gate, the biases and the frame-code table: weight decay would pull the gate shut."""
        return [name for name, p in self.named_parameters() if p.ndim < 2 or name.startswith("time.")]

    def attention_map(self) -> AttentionMap | None:
        if self.last_attention is None:
            return None
        return AttentionMap(self.last_attention, "frame-to-frame attention (averaged over tokens and heads)", "frame")

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """(B*T, N, C) tokens of B clips of `num_frames` frames each -> same shape, frames mixed per token."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"TemporalAttentionMerge expects (B*T, N, {self.dim}) tokens, got {tuple(x.shape)}")
        total_frames = x.shape[0]
        if num_frames < 1 or total_frames % num_frames:
            raise ValueError(
                f"TemporalAttentionMerge: a batch of {total_frames} frames cannot be split into clips of "
                f"{num_frames} frames"
            )
        clips = total_frames // num_frames
        source = x
        codes = self.time(num_frames, x.device)
        if codes is not None:
            source = (x.view(clips, num_frames, *x.shape[1:]) + codes[:, None, :].to(x.dtype)).view_as(x)
        mix = self._mix_plain if self.plain else self._mix
        return x + self.alpha * mix(source, clips, num_frames)

    def _mix(self, x: torch.Tensor, clips: int, num_frames: int) -> torch.Tensor:
        """Attention over frames with the T x T weights written out.

        Queries and keys are projected in the tokens' own layout (no regrouped copy of the C-wide tokens), and the
        values, x itself, are mixed by one small batched product: T is tiny, and fused attention kernels do not
        take value heads wider than the query heads.
        """
        per_head = (clips, num_frames, x.shape[1], self.num_heads, -1)  # b t n h d
        query = self.query(x).view(per_head)
        key = self.key(x).view(per_head)
        logits = torch.einsum("btnhd,bsnhd->bnhts", query, key) * self.qk_dim**-0.5
        weights = logits.softmax(dim=-1)
        if self.recording:
            self.last_attention = weights[0].detach().float().mean(dim=(0, 1))
        mixed = torch.einsum("bnhts,bsnhe->btnhe", weights, x.reshape(per_head))
        return mixed.reshape(x.shape)

    def _mix_plain(self, x: torch.Tensor, clips: int, num_frames: int) -> torch.Tensor:
        """The same attention as a straightforward port computes it (the benchmark's reference-style variant).

        Regroup into one sequence per (clip, token position), project, matmul-softmax-matmul, regroup back.
        """
        _, num_tokens, dim = x.shape
        sequences = x.view(clips, num_frames, num_tokens, dim).transpose(1, 2).reshape(-1, num_frames, dim)
        query = self._split_heads(self.query(sequences))
        key = self._split_heads(self.key(sequences))
        weights = (query @ key.transpose(-2, -1) * self.qk_dim**-0.5).softmax(dim=-1)
        mixed = weights @ self._split_heads(sequences)
        mixed = mixed.transpose(1, 2).reshape(clips, num_tokens, num_frames, dim).transpose(1, 2)
        return mixed.reshape(x.shape)

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        """(S, T, H*D) -> (S, H, T, D)."""
        return t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, qk_dim={self.qk_dim}, num_heads={self.num_heads}, time={self.time.kind}"
