"""The training loop: one captioning loss, accumulation over micro-batches and ranks, guarded optimiser steps.

Every global batch (micro-batches x ranks) is normalised by its total number of caption tokens, so the loss and the
gradients equal those of one process taking the whole batch at once: the choice of world size and accumulation
changes speed, not results. The host never waits for the device except at log steps (loss, counters) and once at
the end. Trouble is watched without stalling: a step whose global gradient norm is not finite is skipped on the
device and counted (all ranks agree: the norm is taken after the gradients are reduced), and too many in a row stop
the run; a gradient norm far above its running average is flagged. A stop signal (`StopSignals`) ends the loop
after the step it arrived in, on every rank alike.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from simvlg_video.model.parallel import unwrap
from simvlg_video.precision import autocast_for
from simvlg_video.train.memory import peak_memory
from simvlg_video.train.session import Session
from simvlg_video.train.stop_signals import StopSignals
from simvlg_video.world import World, sum_over_ranks

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, list[str]]


@dataclass
class FitResult:
    """What a training run did, for the run summary."""

    steps: int = 0  # optimiser steps taken in this call (skipped ones excluded)
    losses: list[float] = field(default_factory=list)  # the global batch's loss at each finite step
    skipped_nonfinite: int = 0
    seconds: float = 0.0
    clips: int = 0  # over all ranks (an image is a clip of one frame)
    data_wait_seconds: float = 0.0  # this rank's time spent waiting for batches
    skipped_clips: int = 0  # clips that could not be decoded (this rank's, over the whole run)
    peak_memory_gib: float = 0.0
    memory_kind: str = ""  # "GPU allocated" (torch's peak on the device) or "process RSS" (CPU runs)
    stopped_by: str | None = None  # the signal (SIGTERM, SIGUSR1) that ended the loop before its last step

    @property
    def clips_per_second(self) -> float:
        return self.clips / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class Hooks:
    """Called by `fit`: `on_log(record)` every log_every steps (rank 0), `on_step_end(step)` after every step on
    every rank (checkpoints, validation)."""

    on_log: Callable[[dict], None] | None = None
    on_step_end: Callable[[int], None] | None = None


def fit(
    model: nn.Module,
    batches: Iterator[Batch],
    session: Session,
    steps: int,
    world: World = World(),
    *,
    start_step: int = 0,
    hooks: Hooks = Hooks(),
    desc: str = "train",
    show_progress: bool = True,
    stop: StopSignals | None = None,
) -> FitResult:
    """Train from `start_step` to `steps`; `model` may be wrapped in DDP or sharded by FSDP.

    A step whose global gradient norm is not finite is skipped on the device (the fused AdamW's `found_inf`, as
    GradScaler uses it) and counted by the session's guard, which stops the run after too many in a row. After
    each step the ranks agree whether `stop` received a signal; if so the step is logged, its hooks run and the
    loop ends there.
    """
    settings, optimizer, scheduler, guard = session.train, session.optimizer, session.scheduler, session.guard
    if settings.accumulation < 1:
        raise ValueError(f"accumulation must be >= 1, got {settings.accumulation}")
    if session.precision == "fp16" and session.scaler is None:
        raise ValueError("precision fp16 needs a GradScaler (fp16 gradients underflow without loss scaling)")
    device = next(unwrap(model).parameters()).device
    params = [p for group in optimizer.param_groups for p in group["params"]]
    step_losses: list[torch.Tensor] = []
    result = FitResult()
    interval = _Interval(device)
    model.train()
    started = time.perf_counter()
    progress = tqdm(
        range(start_step, steps),
        desc=desc,
        initial=start_step,
        total=steps,
        dynamic_ncols=True,
        disable=not (show_progress and world.is_main),
    )
    for step in progress:
        waiting = time.perf_counter()
        micro_batches = [next(batches) for _ in range(settings.accumulation)]
        interval.data_wait += time.perf_counter() - waiting
        loss, grad_norm, bad = _optimiser_step(model, micro_batches, session, params, world)
        scheduler.step()
        guard.update(bad, step + 1)
        step_losses.append(loss)
        interval.add(sum(frames.shape[0] for frames, _ in micro_batches), grad_norm, bad)
        received = stop.agreed(world) if stop is not None else None
        if (step + 1) % settings.log_every == 0 or step + 1 == steps or received is not None:
            record = interval.record(step + 1, loss, grad_norm, scheduler.get_last_lr()[0], world)
            record["grad_norm_spike"] = session.grad_watch.is_spike(record["grad_norm_max"], step + 1)
            result.clips += record.pop("clips")
            result.data_wait_seconds += record["data_wait_s"]
            progress.set_postfix(loss=f"{record['loss']:.3f}")
            if hooks.on_log is not None and world.is_main:
                hooks.on_log(record)
            guard.check(step + 1)
        if hooks.on_step_end is not None:  # checkpoints and validation: not training time
            paused = time.perf_counter()
            hooks.on_step_end(step + 1)
            model.train()  # validation leaves the model in eval mode (frozen parts stay in eval regardless)
            interval.started += time.perf_counter() - paused
            started += time.perf_counter() - paused
        if received is not None:
            result.stopped_by = received.name
            log.warning("%s received: stopping after step %d", received.name, step + 1)
            break
    progress.close()
    result.seconds = time.perf_counter() - started
    if step_losses:
        totals = sum_over_ranks(torch.stack(step_losses), world).tolist()
        result.losses = [value for value in totals if math.isfinite(value)]
    result.steps = len(result.losses)
    result.skipped_nonfinite = int(guard.skipped)
    result.peak_memory_gib, result.memory_kind = peak_memory(device)
    return result


def _optimiser_step(
    model: nn.Module, micro_batches: list[Batch], session: Session, params: list[nn.Parameter], world: World
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward/backward over the micro-batches, clip, step; returns (this rank's share of the loss, global grad
    norm, bool tensor: step skipped)."""
    optimizer, scaler, settings = session.optimizer, session.scaler, session.train
    inner = unwrap(model)
    local_targets = sum(inner.text.num_targets(captions) for _, captions in micro_batches)
    num_targets = int(sum_over_ranks(torch.tensor(local_targets), world))
    optimizer.zero_grad(set_to_none=True)
    share = None
    for index, (frames, captions) in enumerate(micro_batches):
        last = index == len(micro_batches) - 1
        no_sync = getattr(model, "no_sync", None) if not last else None
        with no_sync() if no_sync is not None else contextlib.nullcontext():
            with autocast_for(frames.device, session.precision):
                loss = model(frames, captions, num_targets=num_targets)
            # DDP and FSDP average gradients over ranks; each rank's loss is already its share of the global mean.
            scaled = loss * world.world_size
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        share = loss.detach().float() if share is None else share + loss.detach().float()
    if scaler is not None:
        scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, settings.grad_clip if settings.grad_clip else math.inf)
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    bad = ~torch.isfinite(grad_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    elif getattr(optimizer, "_step_supports_amp_scaling", False):
        optimizer.found_inf = bad.float()
        optimizer.step()
        del optimizer.found_inf
    elif not bad.item():
        optimizer.step()
    return share, grad_norm, bad


class _Interval:
    """Throughput, data wait and grad-norm maximum between two log steps."""

    def __init__(self, device: torch.device):
        self.device = device
        self._reset()

    def _reset(self) -> None:
        self.started = time.perf_counter()
        self.data_wait = 0.0
        self.clips = 0
        self.grad_norm_max = torch.zeros((), device=self.device)

    def add(self, clips: int, grad_norm: torch.Tensor, bad: torch.Tensor) -> None:
        self.clips += clips
        finite_norm = torch.where(bad, torch.zeros_like(grad_norm), grad_norm.detach().float())
        torch.maximum(self.grad_norm_max, finite_norm, out=self.grad_norm_max)

    def record(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor, lr: float, world: World) -> dict:
        """The log record (reads the device once): global loss, clips/s over all ranks, this rank's data wait."""
        stats = torch.stack([loss, loss.new_tensor(float(self.clips))])
        loss_value, clips = sum_over_ranks(stats, world).tolist()
        seconds = time.perf_counter() - self.started
        record = {
            "phase": "train",
            "step": step,
            "loss": loss_value,
            "lr": lr,
            "grad_norm": float(grad_norm),
            "grad_norm_max": float(self.grad_norm_max),
            "clips_per_s": clips / seconds if seconds else 0.0,
            "data_wait_s": self.data_wait,
            "clips": int(clips),
        }
        self._reset()
        return record
