"""The training loop: one captioning loss, optimiser and schedule steps, progress bar and logged metrics."""

from __future__ import annotations

import contextlib
import math
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

Batch = tuple[torch.Tensor, list[str]]


@dataclass
class FitResult:
    """What a training run did, for the run summary."""

    steps: int = 0
    losses: list[float] = field(default_factory=list)
    skipped_nonfinite: int = 0
    seconds: float = 0.0
    videos: int = 0
    peak_memory_gib: float = 0.0
    memory_kind: str = ""  # "GPU allocated" (torch's peak on the device) or "process RSS" (CPU runs)

    @property
    def videos_per_second(self) -> float:
        return self.videos / self.seconds if self.seconds else 0.0


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on the model's device, or nothing for fp32."""
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in dtypes:
        raise ValueError(f"precision must be one of fp32, bf16, fp16; got {precision!r}")
    return torch.autocast(device_type=device.type, dtype=dtypes[precision])


def fit(
    model: nn.Module,
    batches: Iterator[Batch],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    steps: int,
    precision: str = "fp32",
    grad_clip: float | None = 1.0,
    log_every: int = 10,
    on_log: Callable[[dict], None] | None = None,
    desc: str = "train",
    show_progress: bool = True,
) -> FitResult:
    """Run `steps` optimiser steps on the captioning loss; a step whose loss is not finite is skipped and counted.

    With a fused optimiser (build_optimizer's AdamW) the skip happens on the device (the optimiser's `found_inf`,
    as GradScaler uses it), so a step never waits for the device: the host reads the loss only every `log_every`
    steps and once at the end. Other optimisers read each step's loss to decide.
    """
    result = FitResult()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    skip_on_device = getattr(optimizer, "_step_supports_amp_scaling", False)
    losses: list[torch.Tensor] = []
    skipped: list[torch.Tensor] = []
    model.train()
    started = time.perf_counter()
    progress = tqdm(range(steps), desc=desc, disable=not show_progress, dynamic_ncols=True)
    for step in progress:
        frames, captions = next(batches)
        with autocast_for(frames.device, precision):
            loss = model(frames, captions)
        optimizer.zero_grad(set_to_none=True)
        not_finite = ~torch.isfinite(loss.detach())
        if not skip_on_device and not_finite.item():
            skipped.append(not_finite)
            continue
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip else math.inf)
        if skip_on_device:
            optimizer.found_inf = not_finite.float()
            optimizer.step()
            del optimizer.found_inf
            skipped.append(not_finite)
        else:
            optimizer.step()
        scheduler.step()
        losses.append(loss.detach())
        result.videos += frames.shape[0]
        if (step + 1) % log_every == 0 or step + 1 == steps:
            value = loss.item()
            progress.set_postfix(loss=f"{value:.3f}")
            if on_log is not None:
                on_log({"step": step + 1, "loss": value, "lr": scheduler.get_last_lr()[0],
                        "grad_norm": float(grad_norm)})
    result.seconds = time.perf_counter() - started
    result.skipped_nonfinite = int(torch.stack(skipped).sum()) if skipped else 0
    finite = [value for value in torch.stack(losses).tolist() if math.isfinite(value)] if losses else []
    result.losses = finite
    result.steps = len(finite)
    result.peak_memory_gib, result.memory_kind = peak_memory(next(model.parameters()).device)
    return result


def peak_memory(device: torch.device) -> tuple[float, str]:
    """(GiB, what it measures): torch's peak allocation on a GPU since its last reset, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "GPU allocated"
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (kib / 2**30 if sys.platform == "darwin" else kib / 2**20), "process RSS"
