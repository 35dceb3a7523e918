"""The timed parts of the model benchmark: a variant's training step, the frozen ViT's forward alone, and caption
generation."""

from __future__ import annotations

import gc
from dataclasses import asdict

import torch

from simvlg_video.adapters.patch import remove_temporal_adapters
from simvlg_video.bench.flops import CaptionerSizes, training_step_flops, vit_forward_flops
from simvlg_video.bench.model_report import TrainResult
from simvlg_video.bench.model_variants import TRAINABLE, Options, Variant, configure
from simvlg_video.bench.timing import (
    count_host_syncs,
    model_flop_utilisation,
    peak_memory_gib,
    reset_memory,
    seconds_per_call,
)
from simvlg_video.model.freeze import apply_freeze_policy
from simvlg_video.model.lm import CaptionText
from simvlg_video.model.speed import cast_frozen_, set_fused_attention
from simvlg_video.model.vit import vit_tokens


def bench_training(
    model, variant: Variant, options: Options, batch: tuple, peak_flops: dict[torch.dtype, float]
) -> TrainResult:
    """Time the variant's training step; an image variant trains on the batch's first frames (B images). MFU is
    against `peak_flops` of the dtype the step computes in."""
    device = batch[0].device
    frames = 1 if variant.blocks == "image" else options.frames
    batch = (batch[0][:, :frames], *batch[1:])
    result = TrainResult(variant.name, 0)
    optimizer = scaler = None
    try:
        optimizer, scaler = configure(model, variant, options)
        result.adapters = sum(hasattr(block, "temporal_merge") for block in model.vit.blocks)
        dtype = variant.dtype
        last_loss: list[torch.Tensor] = []

        def step() -> None:
            with torch.autocast(device.type, dtype=dtype):
                loss = model.caption_loss(*batch)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            last_loss[:] = [loss.detach()]

        model.train()
        gc.collect()
        reset_memory(device)
        for _ in range(options.warmup):
            step()
        if device.type == "cuda":
            result.host_syncs = count_host_syncs(step)
        seconds = seconds_per_call(step, options.steps, device)
        flops = training_step_flops(CaptionerSizes.of(model), options.batch, frames, options.text_tokens)
        result.seconds_per_step = seconds
        result.videos_per_s = options.batch / seconds
        result.peak_gib = peak_memory_gib(device)
        result.tflop_per_step = flops / 1e12
        result.tflop_per_s = flops / seconds / 1e12
        result.mfu = model_flop_utilisation(flops / seconds, peak_flops[dtype])
        result.loss = float(last_loss[0])
    except torch.OutOfMemoryError:
        result.error = "out of memory"
    finally:
        optimizer = scaler = None  # released before the next variant is built
        model.zero_grad(set_to_none=True)
        gc.collect()
        reset_memory(device)
    return result


def bench_vit_forward(model, frames: int, fused: bool, repeats: int, size: int, peak_flops: float) -> dict:
    """The frozen ViT alone on `frames` images: no grad, bf16 weights and inputs, no adapters; `peak_flops` is the
    bf16 matrix-product rate."""
    device = next(model.parameters()).device
    remove_temporal_adapters(model.vit)
    apply_freeze_policy(model, TRAINABLE)
    cast_frozen_(model, torch.bfloat16)
    set_fused_attention(model, fused)
    images = torch.randn(frames, 3, size, size, device=device, dtype=torch.bfloat16)
    model.eval()
    with torch.no_grad():
        seconds_per_call(lambda: vit_tokens(model.vit, images), 2, device)
        seconds = seconds_per_call(lambda: vit_tokens(model.vit, images), repeats, device)
    flops = vit_forward_flops(CaptionerSizes.of(model), frames)
    return {
        "attention": "fused" if fused else "naive",
        "frames": frames,
        "seconds": seconds,
        "frames_per_s": frames / seconds,
        "tflop_per_s": flops / seconds / 1e12,
        "mfu": model_flop_utilisation(flops / seconds, peak_flops),
    }


def bench_generation(
    model, batch_sizes: list[int], options: Options, generation: dict, repeats: int, size: int
) -> list[dict]:
    """Beam-search captions from frames (ViT + connector + LLM generate), with adapters in all blocks."""
    configure(model, Variant("all", "all"), Options(**{**asdict(options), "compile": False}))
    device = next(model.parameters()).device
    model.eval()
    rows = []
    for batch in batch_sizes:
        frames = torch.randn(batch, options.frames, 3, size, size, device=device)
        generated: list[torch.Tensor] = []

        def run(frames: torch.Tensor = frames, generated: list[torch.Tensor] = generated) -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                generated[:] = [model.generate_ids(frames, **generation)]

        seconds_per_call(run, 1, device)
        seconds = seconds_per_call(run, repeats, device)
        rows.append(
            {
                "batch": batch,
                "beams": generation["num_beams"],
                "seconds_per_batch": seconds,
                "captions_per_s": batch / seconds,
                "mean_new_tokens": caption_lengths(generated[0], model.text).float().mean().item(),
            }
        )
    model.zero_grad(set_to_none=True)
    return rows


def caption_lengths(ids: torch.Tensor, text: CaptionText) -> torch.Tensor:
    """Tokens per generated caption, up to (not counting) its end token or padding."""
    stops = (ids == text.end_token_id) | (ids == text.tokenizer.pad_token_id)
    return torch.where(stops.any(1), stops.int().argmax(1), ids.shape[1])
