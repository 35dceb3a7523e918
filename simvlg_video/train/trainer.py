"""One training session: data, optimiser, checkpoints, validation and resume around `loop.fit`.

Everything a step depends on is either rebuilt from the config or restored from the checkpoint (trainable tensors,
optimiser, schedule, grad scaler, data position, RNG states), so a resumed run continues bit for bit, unless the
resume changes a setting (`train.resume.RESUME_MAY_CHANGE`), which then takes effect from the checkpoint's step on.
A resume on another number of processes keeps the run's global batch (saved in the checkpoint) by adapting the
accumulation: global batch = train.batch_size x accumulation x processes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from simvlg_video.data.clips import ClipData
from simvlg_video.data.dataset import FrameSampler, clip_loader
from simvlg_video.data.manifest import ClipRecord
from simvlg_video.data.shards import TarShardStream, list_shards
from simvlg_video.errors import Interrupted, UserError
from simvlg_video.model.parallel import wrap_model
from simvlg_video.train.batches import EpochClipOrder, ShardBatches, TrainBatches, accumulation_for
from simvlg_video.train.checkpoint import ResumeImpossible
from simvlg_video.train.config import TrainConfig
from simvlg_video.train.guards import TooManyNonFiniteSteps
from simvlg_video.train.loop import FitResult, Hooks, fit
from simvlg_video.train.resume import RunFiles
from simvlg_video.train.session import Session
from simvlg_video.train.skipped import SKIPPED_JOURNAL, SkippedSamples
from simvlg_video.train.stop_signals import StopSignals, clear_interrupted, mark_interrupted
from simvlg_video.world import World

log = logging.getLogger(__name__)

# (step) -> validation metrics on every rank; None when the run does not validate.
Validate = Callable[[int], dict[str, float]]
# {key: value} settings -> the command line that runs this run again with them (resume=..., train.lr=...).
Rerun = Callable[[dict[str, str]], str]


class TrainingStopped(UserError, RuntimeError):
    """The run stopped itself (too many non-finite steps in a row); the message says what was saved and gives the
    commands that continue it."""


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
        streams = max(1, run.data.num_workers)
        stream = TarShardStream(
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
            num_workers=run.data.num_workers,
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
    order = EpochClipOrder(
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
        num_workers=run.data.num_workers,
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
    rerun: Rerun | None = None,
) -> FitResult:
    """Train `model` (the captioner; wrapped here for DDP/FSDP) for run.train.steps, resuming when `files` say so.
    `rerun` words the commands a stopped run's message gives. SIGTERM or SIGUSR1 during training saves a checkpoint
    after the current step and raises Interrupted."""
    train_cfg = run.train
    if train_cfg.dropout is not None:
        log.info("dropout set to %g in %d layers", train_cfg.dropout, set_dropout(model, train_cfg.dropout))
    wrapped = wrap_model(model, world, train_cfg.strategy)
    session = Session.create(wrapped, train_cfg, run.precision)
    run_dir = files.checkpoints.folder.parent
    batches = training_batches(run, records, device, world, run_dir / SKIPPED_JOURNAL)
    start_step, best = 0, None
    global_batch = train_cfg.batch_size * train_cfg.accumulation * world.world_size
    if files.candidates:

        def restore_local(state: dict, mine: dict | None) -> None:
            saved_batch = int(state["global_batch"])  # a damaged value: this checkpoint does not fit
            try:
                accumulation = accumulation_for(saved_batch, train_cfg.batch_size, world.world_size)
            except ValueError as refusal:  # the run's global batch, not this checkpoint: every one would refuse
                raise ResumeImpossible(f"cannot resume {run_dir}: {refusal}") from None
            session.load_state_dict(state["session"])
            batches.load_state_dicts([saved["batches"] for saved in state["ranks"]], accumulation)
            session.train = replace(train_cfg, accumulation=accumulation)

        path, state, _ = files.checkpoints.restore(files.candidates, wrapped, session.optimizer, restore_local)
        if {"train.lr", "train.min_lr"} & files.changes.keys():
            session.set_learning_rate(train_cfg.lr, train_cfg.min_lr)
        global_batch, adapted = int(state["global_batch"]), {}
        if state["world_size"] != world.world_size:
            adapted["processes"] = [state["world_size"], world.world_size]
        if session.train.accumulation != train_cfg.accumulation:
            adapted["accumulation"] = [train_cfg.accumulation, session.train.accumulation]
            log.info(
                "train.accumulation adapted from %d to %d: the run's global batch of %d clips on %d process(es)",
                train_cfg.accumulation,
                session.train.accumulation,
                global_batch,
                world.world_size,
            )
        files.resumed(path, state, **adapted)
        if world.is_main:
            clear_interrupted(run_dir)
        start_step, best = state["step"], state.get("best")
        log.info("resumed from %s at step %d", path, start_step)
    log.info(
        "global batch: %d clips per step (%d per process x %d accumulation x %d processes), %s",
        global_batch,
        train_cfg.batch_size,
        session.train.accumulation,
        world.world_size,
        f"{train_cfg.strategy.upper()}" if world.distributed else "one process",
    )

    def save(step: int, improved: dict | None = None, prune: bool = True) -> Path:
        return files.checkpoints.save(
            step,
            wrapped,
            session.optimizer,
            {"session": session.state_dict(), "best": best, "global_batch": global_batch},
            {"batches": batches.state_dict()},
            best=improved,
            prune=prune,
        )

    saved: dict[int, Path] = {}  # the checkpoint written after a step of this session

    def on_step_end(step: int) -> None:
        nonlocal best
        improved = None
        if validate is not None and train_cfg.eval_every and step % train_cfg.eval_every == 0:
            value = validate(step)[run.best_metric]
            if best is None or value > best["value"]:
                best = improved = {"metric": run.best_metric, "value": value, "step": step}
        if improved is not None or step % train_cfg.checkpoint_every == 0 or step == train_cfg.steps:
            # A step the guard skipped may be the start of a divergence: its save removes no older checkpoint.
            saved[step] = save(step, improved, prune=not session.guard.in_bad_run())

    def on_log(record: dict) -> None:
        files.log({**record, "skipped_clips": len(batches.skipped)})

    signals = StopSignals()
    batch_iter = iter(batches)
    try:
        with signals:  # a second signal while the stop's checkpoint is written changes nothing
            result = fit(
                wrapped,
                batch_iter,
                session,
                train_cfg.steps,
                world,
                start_step=start_step,
                hooks=Hooks(on_log, on_step_end),
                desc="train",
                stop=signals,
            )
            if result.stopped_by is not None:
                step = session.scheduler.last_epoch
                if step not in saved:
                    saved[step] = save(step, prune=not session.guard.in_bad_run())
                record = {"phase": "stopped", "step": step, "signal": result.stopped_by, "checkpoint": str(saved[step])}
                files.log(record)
                if world.is_main:
                    mark_interrupted(run_dir, record)
                raise Interrupted(
                    f"{result.stopped_by} received: stopped after step {step} of {train_cfg.steps} and saved "
                    f"{saved[step]}. Continue with:\n  {(rerun or generic_rerun)({'resume': 'auto'})}"
                )
        result.skipped_clips = len(batches.skipped)
        return result
    except TooManyNonFiniteSteps as stop:
        saved = save(session.scheduler.last_epoch, prune=False)
        # The weights that made the first skipped step non-finite came from the step before it: a checkpoint written
        # before that step is the last one known good.
        earlier = [p for p in files.checkpoints.newest_first() if int(p.name) <= stop.first_bad_step - 2]
        raise TrainingStopped(
            stopped_message(stop, saved, earlier[0] if earlier else None, train_cfg, rerun or generic_rerun)
        ) from None
    finally:
        batch_iter.close()  # stops the loader's worker processes (a sweep runs many sessions in one process)


def generic_rerun(settings: dict[str, str]) -> str:
    return "python -m simvlg_video.adapt hydra.run.dir=RUN_DIR [the run's overrides] " + " ".join(
        f"{key}={value}" for key, value in settings.items()
    )


def stopped_message(
    stop: TooManyNonFiniteSteps, saved: Path, earlier: Path | None, train: TrainConfig, rerun: Rerun
) -> str:
    """What a run the guard stopped says: what it saved and the commands that continue it with a tenth of the
    learning rate (from the last checkpoint before the trouble when there is one: the saved state's weights may
    already be what makes every step non-finite)."""
    lower = {"train.lr": f"{train.lr / 10:g}"}
    if train.min_lr is not None:
        lower["train.min_lr"] = f"{train.min_lr / 10:g}"
    from_saved = rerun({"resume": "auto", **lower})
    lines = [f"{stop}. Saved that state as {saved}; the checkpoints before it are kept."]
    if earlier is not None:
        lines += [
            f"Lower the learning rate and continue from {earlier.name}, the newest checkpoint written before the "
            f"non-finite steps began (the newer ones move to {saved.parent / 'abandoned'}/, nothing is deleted):",
            "  " + rerun({"resume": str(earlier), **lower}),
            "If the cause was a stretch of bad data instead, fix it and continue from the saved state:",
            "  " + from_saved,
        ]
    else:
        lines += [
            "Lower the learning rate (or fix the data) and continue from the saved state:",
            "  " + from_saved,
            "(no checkpoint was written before the non-finite steps began: if the run stops again, start it anew "
            "with a lower train.lr)",
        ]
    return "\n".join(lines)
