"""One training session of `adapt`: data, optimiser, checkpoints, validation and resume around `loop.fit`.

Everything a step depends on is either rebuilt from the config or restored from the checkpoint (trainable tensors,
optimiser, schedule, grad scaler, guards, data position, RNG states), so a resumed run continues bit for bit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from simvlg_video.data.dataset import VideoClipDataset, build_loader
from simvlg_video.data.manifest import ClipRecord
from simvlg_video.data.transforms import FrameTransform
from simvlg_video.train.batches import TrainBatches
from simvlg_video.train.checkpoint import Checkpoints
from simvlg_video.train.distributed import World, wrap_model
from simvlg_video.train.guards import GradNormWatch, NonFiniteGuard, TooManyNonFiniteSteps
from simvlg_video.train.loop import FitResult, StepSettings, fit
from simvlg_video.train.optim import build_optimizer, warmup_cosine
from simvlg_video.train.sampler import ShardedEpochSampler

log = logging.getLogger(__name__)

# (step) -> validation metrics on every rank; None when the run does not validate.
Validate = Callable[[int], dict[str, float]]


def set_dropout(model: nn.Module, probability: float) -> int:
    """Set p of every dropout layer in modules that train; returns how many layers changed.

    Dropout masks come from each process's own RNG, so runs with different numbers of processes match exactly only
    without it (train.dropout=0).
    """
    if not 0 <= probability < 1:
        raise ValueError(f"train.dropout must be in [0, 1), got {probability}")
    changed = 0
    for module in model.modules():
        if isinstance(module, nn.Dropout) and module.training:
            module.p = probability
            changed += 1
    return changed


@dataclass
class Session:
    """What the training loop needs besides the model, built from the config."""

    batches: TrainBatches
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    guard: NonFiniteGuard
    grad_watch: GradNormWatch


def build_session(cfg: DictConfig, model: nn.Module, records: list[ClipRecord], transform: FrameTransform,
                  device: torch.device, world: World) -> Session:
    train = cfg.train
    dataset = VideoClipDataset(records, num_frames=cfg.data.num_frames, sampler=instantiate(cfg.sampler.train),
                               train=True, seed=cfg.seed, backend=cfg.data.backend,
                               decode_timeout=cfg.data.decode_timeout)
    sampler = ShardedEpochSampler(len(records), train.batch_size, seed=cfg.seed, rank=world.rank,
                                  world_size=world.world_size, accumulation=train.accumulation)
    loader = build_loader(dataset, train.batch_size, shuffle=False, num_workers=train.num_workers, seed=cfg.seed,
                          drop_last=True, max_skip_fraction=cfg.data.max_skip_fraction, sampler=sampler)
    optimizer = build_optimizer(model, lr=train.lr, weight_decay=train.weight_decay)
    scheduler = warmup_cosine(optimizer, train.warmup_steps, train.steps, train.warmup_start_lr, train.min_lr)
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
    return Session(TrainBatches(loader, sampler, transform, device, seed=cfg.seed), optimizer, scheduler, scaler,
                   NonFiniteGuard(train.max_nonfinite_in_a_row, device), GradNormWatch(train.grad_norm_spike))


def train(cfg: DictConfig, model: nn.Module, trainable: list[str], records: list[ClipRecord],
          transform: FrameTransform, device: torch.device, world: World, checkpoints: Checkpoints,
          resume_from: Path | None, on_log: Callable[[dict], None], validate: Validate | None) -> FitResult:
    """Train `model` (the captioner; wrapped here for DDP/FSDP) for cfg.train.steps, from `resume_from` if given."""
    train_cfg = cfg.train
    if train_cfg.dropout is not None:
        log.info("dropout set to %g in %d layers", train_cfg.dropout, set_dropout(model, train_cfg.dropout))
    wrapped = wrap_model(model, world, train_cfg.strategy)
    session = build_session(cfg, wrapped, records, transform, device, world)
    start_step, best = 0, None
    if resume_from is not None:
        state, mine = checkpoints.load(resume_from, wrapped, trainable, session.optimizer)
        session.scheduler.load_state_dict(state["scheduler"])
        if session.scaler is not None:
            session.scaler.load_state_dict(state["scaler"])
        session.guard.load_state_dict(state["guard"])
        session.grad_watch.load_state_dict(state["grad_watch"])
        session.batches.load_state_dict(mine["batches"])
        start_step, best = state["step"], state.get("best")
        log.info("resumed from %s at step %d", resume_from, start_step)
    global_batch = train_cfg.batch_size * train_cfg.accumulation * world.world_size
    log.info("global batch: %d clips per step (%d per process x %d accumulation x %d processes), %s",
             global_batch, train_cfg.batch_size, train_cfg.accumulation, world.world_size,
             f"{train_cfg.strategy.upper()}" if world.distributed else "one process")

    def save(step: int, improved: dict | None = None) -> Path:
        shared = {"scheduler": session.scheduler.state_dict(), "guard": session.guard.state_dict(),
                  "grad_watch": session.grad_watch.state_dict(), "best": best,
                  "scaler": session.scaler.state_dict() if session.scaler is not None else None}
        return checkpoints.save(step, wrapped, trainable, session.optimizer, shared,
                                {"batches": session.batches.state_dict()}, best=improved)

    def on_step_end(step: int) -> None:
        nonlocal best
        improved = None
        if validate is not None and train_cfg.eval_every and step % train_cfg.eval_every == 0:
            metrics = validate(step)
            value = metrics[cfg.eval.best_metric]
            if best is None or value > best["value"]:
                best = improved = {"metric": cfg.eval.best_metric, "value": value, "step": step}
        if improved is not None or step % train_cfg.checkpoint_every == 0 or step == train_cfg.steps:
            save(step, improved)

    def log_with_skips(record: dict) -> None:
        on_log({**record, "skipped_clips": len(session.batches.skipped)})

    settings = StepSettings(cfg.precision, train_cfg.grad_clip, train_cfg.accumulation, train_cfg.log_every)
    batch_iter = iter(session.batches)
    try:
        result = fit(wrapped, batch_iter, session.optimizer, session.scheduler, train_cfg.steps, settings,
                     start_step=start_step, scaler=session.scaler, world=world, guard=session.guard,
                     grad_watch=session.grad_watch, on_log=log_with_skips, on_step_end=on_step_end, desc="adapt")
        result.skipped_clips = len(session.batches.skipped)
        return result
    except TooManyNonFiniteSteps as error:
        step = session.scheduler.last_epoch
        folder = save(step)
        raise SystemExit(f"error: {error}. Saved that state as {folder}; fix the data or lower train.lr, then "
                         "continue with resume=auto") from None
    finally:
        batch_iter.close()  # stops the loader's worker processes (a sweep runs many sessions in one process)
