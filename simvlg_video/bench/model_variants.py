"""The model benchmark's variants: what each one puts on the captioner (adapters, precision, attention kernels,
optimiser) before its training steps are timed."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from simvlg_video.adapters.patch import remove_temporal_adapters
from simvlg_video.adapters.placements import MergedTokens, Reference
from simvlg_video.model.adapter_protocol import ADAPTERS, adapter_parameters
from simvlg_video.model.captioner import MeanOverTime, VideoCaptioner
from simvlg_video.model.connector import apply_tome
from simvlg_video.model.freeze import apply_freeze_policy
from simvlg_video.model.speed import cast_frozen_, compile_vit_blocks, set_fused_attention
from simvlg_video.train.optim import build_optimizer, parameter_groups

TRAINABLE = ["ln_vision", "VL_proj", "connector", "opt_proj"]


@dataclass(frozen=True)
class Variant:
    name: str
    blocks: str  # "all" | "last_k" | "none" | "merged" | "image"
    last_k: int | None = None
    plain_port: bool = False  # the reference code ported as it is: naive attention, fp16 + grad scaler
    merge_r: int | None = None  # tokens merged per connector layer; None: the model's own

    @property
    def dtype(self) -> torch.dtype:
        """What the step computes in: the port's fp16, this package's bf16."""
        return torch.float16 if self.plain_port else torch.bfloat16


def parse_variant(name: str) -> Variant:
    """`port`, `all`, `merged`, `none`, `lastK` (e.g. last8), `image` or `image_rN` (e.g. image_r0)."""
    if name == "port":
        return Variant(name, "all", plain_port=True)
    if name in ("all", "none", "merged", "image"):
        return Variant(name, name)
    if name.startswith("image_r") and name[7:].isdigit():
        return Variant(name, "image", merge_r=int(name[7:]))
    if name.startswith("last") and name[4:].isdigit() and int(name[4:]) > 0:
        return Variant(name, "last_k", int(name[4:]))
    raise ValueError(f"unknown variant {name!r}: use port, all, merged, none, lastK (e.g. last8), image or image_rN")


@dataclass
class Options:
    batch: int
    frames: int
    text_tokens: int
    steps: int
    warmup: int
    compile: bool = False
    checkpointing: bool = False
    adapter: dict = field(default_factory=dict)  # the temporal modules' qk_dim and num_heads
    connector_r: int | None = 19  # the ToMe connector's tokens merged per layer; None: a Q-Former (merges none)


def configure(model: VideoCaptioner, variant: Variant, options: Options) -> tuple[torch.optim.Optimizer, object]:
    """Put the variant's adapters, precision and attention kernels on the model; returns (optimizer, grad scaler)."""
    remove_temporal_adapters(model.vit)
    model.time_pool = MeanOverTime()
    if options.connector_r is not None:
        apply_tome(model.connector, options.connector_r if variant.merge_r is None else variant.merge_r)
    trainable = list(TRAINABLE)
    if variant.blocks == "merged":
        MergedTokens(num_heads=options.adapter["num_heads"]).apply(model)
        with torch.no_grad():
            model.time_pool.out.weight.normal_(std=0.01)  # an open gate, as after some training
        trainable.append(ADAPTERS)
    elif variant.blocks not in ("none", "image"):
        Reference(blocks=variant.blocks, last_k=variant.last_k, **options.adapter).apply(model)
        with torch.no_grad():
            for name, param in adapter_parameters(model):
                if name.endswith("alpha"):
                    param.fill_(0.01)  # open gates, as after some training
        trainable.append(ADAPTERS)
    apply_freeze_policy(model, trainable)
    cast_frozen_(model, variant.dtype)
    set_fused_attention(model, fused=not variant.plain_port)
    model.checkpoint_vit = options.checkpointing and not variant.plain_port
    if options.compile and not variant.plain_port:
        compile_vit_blocks(model)
    if variant.plain_port:
        optimizer = torch.optim.AdamW(parameter_groups(model, 0.05), lr=1e-5)
        return optimizer, torch.amp.GradScaler(next(model.parameters()).device.type)
    return build_optimizer(model, lr=1e-5), None


def random_batch(model: VideoCaptioner, options: Options, device: torch.device, size: int) -> tuple:
    generator = torch.Generator(device=device).manual_seed(0)
    frames = torch.randn(options.batch, options.frames, 3, size, size, device=device, generator=generator)
    vocab = model.lm.config.vocab_size
    ids = torch.randint(4, vocab, (options.batch, options.text_tokens), device=device, generator=generator)
    return frames, ids, torch.ones_like(ids), ids.clone()
