"""Speed and memory settings of a captioner that leave what it computes unchanged (up to rounding).

* `cast_frozen_`: frozen weights in the compute dtype (bf16), trainable ones kept in fp32. Under autocast the frozen
  ViT's residual stream then stays bf16 (fp32 weights make it fp32: the class token and position embedding are
  added in their own dtype), which halves its saved activations and its memory traffic.
* `set_fused_attention`: fused SDPA kernels (timm's `fused_attn`, Hugging Face's "sdpa") or the plain
  matmul-softmax-matmul every reference-style port uses (benchmarks compare the two).
* `compile_vit_blocks`: `torch.compile` each ViT block (all blocks share one compiled graph).

Activation checkpointing of the ViT blocks is a flag of the captioner itself: `model.checkpoint_vit = True`.
"""

from __future__ import annotations

import torch
from torch import nn

from simvlg_video.model.adapter_protocol import adapter_modules
from simvlg_video.precision import compute_dtype


def cast_frozen_(model: nn.Module, dtype: torch.dtype) -> dict[str, int]:
    """Cast frozen (requires_grad False) floating parameters to `dtype` and trainable ones to fp32, in place.

    Floating buffers of modules whose own parameters are all frozen follow them (timm keeps EVA's zero k bias as a
    buffer beside the q/v biases). Returns how many tensors were cast each way.
    """
    counts = {"frozen": 0, "trainable": 0}
    for module in model.modules():
        own = list(module.named_parameters(recurse=False))
        for _, param in own:
            if not param.is_floating_point():
                continue
            target = torch.float32 if param.requires_grad else dtype
            if param.dtype != target:
                param.data = param.data.to(target)
                counts["trainable" if param.requires_grad else "frozen"] += 1
        if own and not any(p.requires_grad for _, p in own):
            for name, buffer in module.named_buffers(recurse=False):
                if buffer.is_floating_point() and buffer.dtype != dtype:
                    setattr(module, name, buffer.to(dtype))
    return counts


def set_fused_attention(model: nn.Module, fused: bool) -> None:
    """Fused attention kernels everywhere (True), or the plain matmul-softmax-matmul everywhere (False).

    Covers timm attention modules (`fused_attn`), Hugging Face submodels (`set_attn_implementation`) and every
    adapter (its plain-attention path).
    """
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = fused
    for _, adapter in adapter_modules(model):
        adapter.set_plain_attention(not fused)
    for child in model.children():
        if hasattr(child, "set_attn_implementation"):
            child.set_attn_implementation("sdpa" if fused else "eager")


def compile_vit_blocks(model: nn.Module, **compile_kwargs) -> int:
    """`torch.compile` every block of `model.vit` in place (blocks of one class share a graph); returns the count.

    Patch the adapters in first, so that the compiled code is that of the patched blocks.
    """
    for block in model.vit.blocks:
        block.compile(**compile_kwargs)
    return len(model.vit.blocks)


def apply_speed_settings(model: nn.Module, precision: str, checkpointing: bool = False, compile: bool = False) -> None:
    """A training run's speed settings, after the freeze policy: frozen weights in the compute dtype (they were
    loaded in it; this covers parts frozen by this run's choice) and trainable ones in fp32, activation checkpointing
    and `torch.compile` of the ViT blocks when asked. Fused attention is the default of every module already."""
    if compute_dtype(precision) != torch.float32:
        cast_frozen_(model, compute_dtype(precision))
    model.checkpoint_vit = checkpointing
    if compile:
        compile_vit_blocks(model)
