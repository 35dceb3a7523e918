"""Patch temporal adapters into an existing timm ViT instance.

Patching swaps the class of each chosen block for a subclass whose forward calls the block's own sublayers with
`temporal_merge` between the attention and MLP residuals. Nothing is rebuilt or copied, so the base parameter names
stay as they were and a base state dict loads before or after patching; the new tensors are
`blocks.{i}.temporal_merge.{query,key}.{weight,bias}` and `blocks.{i}.temporal_merge.alpha`.

How many frames make a clip is per-forward state: the ViT's `clip_state` dict (see `simvlg_video.model.vit`), shared
by reference with every patched block and set around a forward by `clip_length(vit, T)`. Recomputation by
activation checkpointing happens during backward, outside that context: the captioner re-enters it there.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.models.eva import EvaBlock
from timm.models.vision_transformer import Block as VitBlock
from torch import nn

from simvlg_video.adapters.temporal import TemporalAttentionMerge
from simvlg_video.model.vit import clip_state

_CLIP = "_clip_state"


class _TemporalBlock:
    """Forward of a patched block: attention residual, temporal merge, MLP residual (no norm before the merge)."""

    temporal_merge: TemporalAttentionMerge

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        # Extra arguments (rope, attn_mask, is_causal) go to the attention sublayer, as in the base block.
        x = x + self._attention_branch(x, *args, **kwargs)
        x = self.temporal_merge(x, self._num_frames())
        return x + self._mlp_branch(x)

    def _num_frames(self) -> int:
        num_frames = getattr(self, _CLIP)["num_frames"]
        if num_frames is None:
            raise RuntimeError(
                "a ViT block with a temporal adapter ran without the number of frames per clip; run the ViT "
                "inside `with clip_length(vit, num_frames):` on the ViT that was patched"
            )
        return num_frames


class TemporalEvaBlock(_TemporalBlock, EvaBlock):
    """timm `EvaBlock` (layer scale `gamma_1` / `gamma_2`, may be None) with a temporal adapter."""

    def _attention_branch(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        y = self.attn(self.norm1(x), *args, **kwargs)
        return self.drop_path1(y if self.gamma_1 is None else self.gamma_1 * y)

    def _mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(self.norm2(x))
        return self.drop_path2(y if self.gamma_2 is None else self.gamma_2 * y)


class TemporalVitBlock(_TemporalBlock, VitBlock):
    """timm vision_transformer `Block` (layer scale modules `ls1` / `ls2`) with a temporal adapter."""

    def _attention_branch(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.drop_path1(self.ls1(self.attn(self.norm1(x), *args, **kwargs)))

    def _mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


# Exact base classes only: a subclass of these may have a different forward that we would silently replace.
_PATCHED_CLASS: dict[type, type] = {EvaBlock: TemporalEvaBlock, VitBlock: TemporalVitBlock}
_BASE_CLASS: dict[type, type] = {patched: base for base, patched in _PATCHED_CLASS.items()}


def _vit_blocks(vit: nn.Module) -> nn.ModuleList | nn.Sequential:
    blocks = getattr(vit, "blocks", None)
    if not isinstance(blocks, (nn.ModuleList, nn.Sequential)):
        raise TypeError(f"expected a timm ViT with `blocks` (ModuleList or Sequential), got {type(vit).__name__}")
    return blocks


def resolve_blocks(blocks: str | int | Sequence[int], last_k: int | None, depth: int) -> list[int]:
    """Block indices from "all", "last_k" (with `last_k`), one index, or a list of indices."""
    valid = f"valid block indices are 0..{depth - 1}"
    if last_k is not None and blocks != "last_k":
        raise ValueError(f"last_k={last_k} is only used with blocks='last_k', got blocks={blocks!r}")
    if blocks == "all":
        return list(range(depth))
    if blocks == "last_k":
        if isinstance(last_k, bool) or not isinstance(last_k, int) or not 1 <= last_k <= depth:
            raise ValueError(f"blocks='last_k' needs last_k in 1..{depth} (the ViT has {depth} blocks), got {last_k!r}")
        return list(range(depth - last_k, depth))
    if isinstance(blocks, str):
        raise ValueError(f"blocks must be 'all', 'last_k' or block indices, got {blocks!r}")
    indices = [blocks] if isinstance(blocks, int) else list(blocks)
    if not indices:
        raise ValueError("blocks is an empty list; to run without adapters, use adapter=none")
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < depth:
            raise ValueError(f"block index {index!r} is out of range; {valid}")
    if len(set(indices)) != len(indices):
        raise ValueError(f"block indices repeat: {indices}")
    return sorted(indices)


def add_temporal_adapters(
    vit: nn.Module, indices: Sequence[int], qk_dim: int, num_heads: int, time_encoding: str, max_frames: int
) -> list[int]:
    """Give blocks `indices` of this ViT instance a zero-gated `temporal_merge` (see `resolve_blocks` for choosing
    them); returns the indices. New adapters take the device of their block (the meta device included) and fp32."""
    block_list = _vit_blocks(vit)
    already = [i for i, block in enumerate(block_list) if type(block) in _BASE_CLASS]
    if already:
        raise RuntimeError(
            f"this ViT already has temporal adapters in blocks {already}; call remove_temporal_adapters first"
        )
    indices = resolve_blocks(list(indices), None, len(block_list))
    for i in indices:
        if type(block_list[i]) not in _PATCHED_CLASS:
            supported = ", ".join(f"{c.__module__}.{c.__name__}" for c in _PATCHED_CLASS)
            raise TypeError(f"blocks.{i} is a {type(block_list[i]).__name__}; supported block classes: {supported}")
    state = clip_state(vit)
    for i in indices:
        block = block_list[i]
        block.temporal_merge = TemporalAttentionMerge(
            vit.embed_dim, qk_dim, num_heads, time_encoding, max_frames, device=next(block.parameters()).device
        )
        setattr(block, _CLIP, state)
        block.__class__ = _PATCHED_CLASS[type(block)]
    return indices


def remove_temporal_adapters(vit: nn.Module) -> list[int]:
    """Undo `add_temporal_adapters` on this instance; returns the indices that had adapters ([] if none)."""
    removed = []
    for i, block in enumerate(_vit_blocks(vit)):
        if type(block) in _BASE_CLASS:
            del block.temporal_merge
            delattr(block, _CLIP)
            block.__class__ = _BASE_CLASS[type(block)]
            removed.append(i)
    return removed
