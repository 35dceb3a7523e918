"""The frozen vision encoder: a timm EVA ViT whose output is the last block's tokens (CLS + patches), unnormalised.

Presets:
* ``eva_vit_g`` - EVA-CLIP ViT-g/14 as BLIP-2 uses it: 39 blocks, width 1408, 16 heads, MLP 6144, patch 14,
  q/v biases, absolute position embedding, CLS token; 224x224 -> 257 tokens.
* ``tiny`` - the same block type at a toy size for tests and the demo: 64x64, patch 8, width 96, 4 blocks, 4 heads
  -> 65 tokens.

Temporal adapters patched into the blocks see the frames of a clip as consecutive rows of the batch; how many frames
make a clip is per-forward state, set with :func:`clip_length` around the forward.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
from timm.models.eva import Eva
from torch import nn
from torch.utils.checkpoint import checkpoint

# No pooling, no final norm, no head: the captioner normalises the tokens itself (`ln_vision`). timm's LayerNorm
# defaults to eps 1e-6, as EVA uses.
_TOKENS_ONLY = dict(num_classes=0, global_pool="", use_fc_norm=False, use_post_transformer_norm=False)

_TINY = dict(img_size=64, patch_size=8, embed_dim=96, depth=4, num_heads=4, mlp_ratio=4.0)

PRESETS = ("eva_vit_g", "tiny")
# What `vit.overrides` of a model config may set: the EVA constructor's own settings, never a class (norm_layer) nor
# timm.create_model's arguments (checkpoint_path, pretrained_cfg, ...), which would read files no fingerprint checks.
VIT_SETTINGS = frozenset(inspect.signature(Eva.__init__).parameters) - {"self", "norm_layer", "device", "dtype"}
_CLIP = "_clip_state"  # the per-forward dict a ViT shares with its patched blocks


@dataclass
class VitConfig:
    """The vision encoder of a model directory (`vit:` in model.yaml)."""

    preset: str = "eva_vit_g"  # the reference's EVA-CLIP ViT-g/14 (39 blocks), or "tiny"
    overrides: dict[str, Any] = field(default_factory=dict)  # constructor arguments replaced (img_size, depth, ...)
    weights: str | None = None  # frozen weights file (BLIP-2's eva_vit_g.pth, or .safetensors), relative to the
    # model directory or absolute; None: the ViT's tensors are stored in the model directory itself


def build_vit(preset: str, **overrides: Any) -> Eva:
    """A randomly initialised ViT for `preset`; `overrides` replace its constructor arguments (e.g. img_size, depth).

    Parameters take torch's default dtype and device, so a caller can build straight into bf16 or on the meta device.
    """
    if preset == "eva_vit_g":
        # The 40th block of EVA-g is dropped, as in BLIP-2.
        vit = timm.create_model("eva_giant_patch14_224", pretrained=False, **{"depth": 39, **_TOKENS_ONLY, **overrides})
    elif preset == "tiny":
        vit = Eva(**{**_TINY, **_TOKENS_ONLY, **overrides})
    else:
        raise ValueError(f"unknown ViT preset {preset!r}; presets: {', '.join(PRESETS)}")
    for name in ("norm", "fc_norm", "head"):
        if not isinstance(getattr(vit, name), nn.Identity):
            raise ValueError(
                f"build_vit({preset!r}) with overrides {overrides} gave the ViT a `{name}`; "
                "its output must be the raw tokens"
            )
    return vit


def fill_unsaved_buffers(vit: nn.Module) -> None:
    """After `to_empty`, compute the buffers a state dict does not hold (EVA's zero k bias) with each timm module's
    own `init_non_persistent_buffers`. A buffer that no module fills is an error, never left as uninitialised memory."""
    saved = set(vit.state_dict())
    unsaved = {name for name, _ in vit.named_buffers() if name not in saved}
    for prefix, module in vit.named_modules():
        if hasattr(module, "init_non_persistent_buffers"):
            module.init_non_persistent_buffers()
            unsaved -= {f"{prefix}.{name}" if prefix else name for name, _ in module.named_buffers(recurse=False)}
    if unsaved:
        raise RuntimeError(f"the ViT has buffers that neither its weights file nor its modules fill: {sorted(unsaved)}")


def clip_state(vit: nn.Module) -> dict:
    """The ViT's per-forward state dict (`{"num_frames": T or None}`), created on first use; patched blocks keep a
    reference to the same dict."""
    if not hasattr(vit, _CLIP):
        setattr(vit, _CLIP, {"num_frames": None})
    return getattr(vit, _CLIP)


@contextmanager
def clip_length(vit: nn.Module, num_frames: int) -> Iterator[None]:
    """Within the block, the ViT's batch holds clips of `num_frames` consecutive frames (what temporal adapters read).

    Works on a ViT without adapters too (then nothing reads it). The previous value is restored on exit, so contexts
    nest.
    """
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
    state = clip_state(vit)
    previous = state["num_frames"]
    state["num_frames"] = num_frames
    try:
        yield
    finally:
        state["num_frames"] = previous


def token_positions(vit: Eva) -> torch.Tensor:
    """(1, prefix + patches, 2): where each output token of `vit` sits in the image, (x, y) in [0, 1].

    Patch tokens sit at their patch's centre in raster order; prefix tokens (CLS), which stand for the whole image,
    at its centre.
    """
    rows, cols = vit.patch_embed.grid_size
    y, x = torch.meshgrid((torch.arange(rows) + 0.5) / rows, (torch.arange(cols) + 0.5) / cols, indexing="ij")
    patches = torch.stack([x.flatten(), y.flatten()], dim=-1)
    prefix = torch.full((vit.num_prefix_tokens, 2), 0.5)
    return torch.cat([prefix, patches]).unsqueeze(0).to(vit.cls_token.device if vit.cls_token is not None else None)


def _block_index(name: str) -> int | None:
    """Block index of a parameter name `blocks.{i}.…`, None for the embeddings."""
    parts = name.split(".", 2)
    return int(parts[1]) if parts[0] == "blocks" else None


def _check_frozen_below(vit: Eva, grad_from_block: int) -> None:
    """Refuse to drop gradients: nothing computed under no_grad may hold a trainable parameter."""
    trainable_below = [
        name
        for name, p in vit.named_parameters()
        if p.requires_grad and ((index := _block_index(name)) is None or index < grad_from_block)
    ]
    if trainable_below:
        raise ValueError(
            f"grad_from_block={grad_from_block}, but these parameters below it are trainable and would get no "
            f"gradient: {trainable_below[:5]}{' ...' if len(trainable_below) > 5 else ''}"
        )


def vit_tokens(
    vit: Eva,
    images: torch.Tensor,
    grad_from_block: int | None = None,
    checkpoint_blocks: bool = False,
    recompute_context: Callable[[], AbstractContextManager] = nullcontext,
) -> torch.Tensor:
    """(N, 3, H, W) images -> (N, num_prefix_tokens + patches, C) tokens of the last block, without any final norm.

    `grad_from_block` is the lowest block that needs autograd (the first one with a trainable parameter): the
    embeddings and the blocks below it run under `torch.no_grad()`, so they keep no activations for backward.
    It is an error if anything below it is trainable. None runs everything in the caller's grad mode.

    `checkpoint_blocks` trades compute for memory: blocks that run with autograd keep only their input and are
    recomputed during backward, inside `recompute_context()` (for per-forward state the blocks read, such as the
    number of frames of the temporal adapters).
    """
    if not isinstance(vit, Eva):
        raise TypeError(f"vit_tokens expects a timm Eva model, got {type(vit).__name__}")
    if images.dim() != 4:
        raise ValueError(f"vit_tokens expects images of shape (N, 3, H, W), got {tuple(images.shape)}")
    if vit.grad_checkpointing:
        raise ValueError("vit_tokens does not checkpoint blocks; call vit.set_grad_checkpointing(False)")
    depth = len(vit.blocks)
    split = 0 if grad_from_block is None else grad_from_block
    if isinstance(split, bool) or not isinstance(split, int) or not 0 <= split <= depth:
        raise ValueError(f"grad_from_block must be None or an int in 0..{depth}, got {grad_from_block!r}")
    if split > 0:
        _check_frozen_below(vit, split)

    with torch.no_grad() if split > 0 else nullcontext():
        x, rope = vit._pos_embed(vit.patch_embed(images))
        x = vit.norm_pre(x)
        x = _run_blocks(vit, x, rope, range(split))
    recompute = recompute_context if checkpoint_blocks and torch.is_grad_enabled() else None
    return _run_blocks(vit, x, rope, range(split, depth), recompute)


def _run_blocks(
    vit: Eva,
    x: torch.Tensor,
    rope: torch.Tensor | None,
    indices: range,
    recompute_context: Callable[[], AbstractContextManager] | None = None,
) -> torch.Tensor:
    """Run the given blocks; with a `recompute_context`, each one under activation checkpointing."""
    per_block_rope = rope is not None and getattr(vit, "rope_mixed", False)
    for i in indices:
        block_rope = rope[i] if per_block_rope else rope
        if recompute_context is None:
            x = vit.blocks[i](x, rope=block_rope)
        else:
            x = checkpoint(
                vit.blocks[i],
                x,
                rope=block_rope,
                use_reentrant=False,
                context_fn=lambda: (nullcontext(), recompute_context()),
            )
    return x
