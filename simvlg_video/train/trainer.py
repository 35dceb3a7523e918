"""One training session: data, optimiser, checkpoints, validation and resume around `loop.fit`.

Everything a step depends on is either rebuilt from the config or restored from the checkpoint (trainable tensors,
optimiser, schedule, grad scaler, guards, data position, RNG states), so a resumed run continues bit for bit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from simvlg_video.data.clips import ClipData
from simvlg_video.data.dataset import FrameSampler, clip_loader
from simvlg_video.data.manifest import ClipRecord
from simvlg_video.data.shards import ShardStream, list_shards
from simvlg_video.model.parallel import wrap_model
from simvlg_video.train.batches import ShardBatches, ShardedClipOrder, TrainBatches
from simvlg_video.train.checkpoint import RunFiles
from simvlg_video.train.loop import FitResult, Hooks, Session, TooManyNonFiniteSteps, TrainConfig, fit
from simvlg_video.train.skipped import SKIPPED_JOURNAL, SkippedSamples
from simvlg_video.world import World

log = logging.getLogger(__name__)

# (step) -> validation metrics on every rank; None when the run does not validate.
Validate = Callable[[int], dict[str, float]]


@dataclass
class TrainingRun:
    """What a training session is made of, besides the model: the `train:` settings, the compute precision, the
    seed, the clips and how their frames are sampled, and the model's input size."""

    train: TrainConfig
    precision: str
    seed: int
    data: ClipData
    frame_sampler: FrameSampler
    image_size: int
    best_metric: str = "CIDEr"  # which validation score picks the best checkpoint (higher is better)


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


def training_batches(
    run: TrainingRun, records: list[ClipRecord], device: torch.device, world: World, skipped_journal: Path | None = None
) -> TrainBatches | ShardBatches:
    """This rank's endless training batches: its share of every epoch's shuffle (of the manifest's clips, or of
    `data.shards`), decoded by the loader workers, transformed on `device`; every sample skipped is appended to
    `skipped_journal`."""
    train = run.train
    skipped = SkippedSamples(skipped_journal, rank=world.rank)
    if run.data.shards:
        streams = max(1, train.num_workers)
        stream = ShardStream(
            list_shards(run.data.shards),
            train.batch_size,
            run.data.shard_reading(device),
            seed=run.seed,
            rank=world.rank,
            world_size=world.world_size,
            num_streams=streams,
        )
        loader = DataLoader(
            stream,
            batch_size=None,
            num_workers=train.num_workers,
            pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(run.seed),
        )  # not the global RNG dropout draws on
        return ShardBatches(
            loader,
            stream,
            run.data.train_transform(run.image_size),
            device,
            seed=run.seed,
            max_skip_fraction=run.data.max_skip_fraction,
            skipped=skipped,
        )
    order = ShardedClipOrder(
        len(records),
        train.batch_size,
        seed=run.seed,
        rank=world.rank,
        world_size=world.world_size,
        accumulation=train.accumulation,
    )
    loader = clip_loader(
        records,
        run.data.reading,
        run.frame_sampler,
        train=True,
        batch_size=train.batch_size,
        num_workers=train.num_workers,
        seed=run.seed,
        order=order,
        drop_last=True,
    )
    return TrainBatches(loader, order, run.data.train_transform(run.image_size), device, seed=run.seed, skipped=skipped)


def train(
    model: nn.Module,
    run: TrainingRun,
    records: list[ClipRecord],
    device: torch.device,
    world: World,
    files: RunFiles,
    validate: Validate | None = None,
) -> FitResult:
    """Train `model` (the captioner; wrapped here for DDP/FSDP) for run.train.steps, resuming when `files` say so."""
    train_cfg = run.train
    if train_cfg.dropout is not None:
        log.info("dropout set to %g in %d layers", train_cfg.dropout, set_dropout(model, train_cfg.dropout))
    wrapped = wrap_model(model, world, train_cfg.strategy)
    session = Session.create(wrapped, train_cfg, run.precision)
    batches = training_batches(run, records, device, world, files.checkpoints.folder.parent / SKIPPED_JOURNAL)
    start_step, best = 0, None
    if files.resume_from is not None:
        state, mine = files.checkpoints.load(files.resume_from, wrapped, session.optimizer)
        session.load_state_dict(state["session"])
        try:
            batches.load_state_dict(mine["batches"])
        except ValueError as error:
            raise SystemExit(f"error: cannot resume from {files.resume_from}: {error}") from None
        start_step, best = state["step"], state.get("best")
        log.info("resumed from %s at step %d", files.resume_from, start_step)
    global_batch = train_cfg.batch_size * train_cfg.accumulation * world.world_size
    log.info(
        "global batch: %d clips per step (%d per process x %d accumulation x %d processes), %s",
        global_batch,
        train_cfg.batch_size,
        train_cfg.accumulation,
        world.world_size,
        f"{train_cfg.strategy.upper()}" if world.distributed else "one process",
    )

    def save(step: int, improved: dict | None = None) -> Path:
        return files.checkpoints.save(
            step,
            wrapped,
            session.optimizer,
            {"session": session.state_dict(), "best": best},
            {"batches": batches.state_dict()},
            best=improved,
        )

    def on_step_end(step: int) -> None:
        nonlocal best
        improved = None
        if validate is not None and train_cfg.eval_every and step % train_cfg.eval_every == 0:
            value = validate(step)[run.best_metric]
            if best is None or value > best["value"]:
                best = improved = {"metric": run.best_metric, "value": value, "step": step}
        if improved is not None or step % train_cfg.checkpoint_every == 0 or step == train_cfg.steps:
            save(step, improved)

    def on_log(record: dict) -> None:
        files.log({**record, "skipped_clips": len(batches.skipped)})

    batch_iter = iter(batches)
    try:
        result = fit(
            wrapped,
            batch_iter,
            session,
            train_cfg.steps,
            world,
            start_step=start_step,
            hooks=Hooks(on_log, on_step_end),
            desc="train",
        )
        result.skipped_clips = len(batches.skipped)
        return result
    except TooManyNonFiniteSteps as error:
        folder = save(session.scheduler.last_epoch)
        raise SystemExit(
            f"error: {error}. Saved that state as {folder}; fix the data or lower train.lr, then "
            "continue with resume=auto"
        ) from None
    finally:
        batch_iter.close()  # stops the loader's worker processes (a sweep runs many sessions in one process)
