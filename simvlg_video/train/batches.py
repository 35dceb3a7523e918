"""Which clips each rank trains on, and the endless stream of training batches they make.

The order is one shuffle per epoch drawn from (seed, epoch), never dependent on the world size; rank r takes every
world_size-th index of it. Batch k of every rank together is therefore exactly batch k of a single process whose
batch is world_size times larger, and an epoch holds whole optimiser steps (batch x processes x accumulation): runs
on different numbers of processes, or accumulating over micro-batches, see the same data at the same step.

The position (epoch, batches handed out in it) is the whole state: the order, each clip's frames and caption and
each clip's crop are drawn from (seed, epoch, clip index), so a run resumed at a position sees exactly the batches
the interrupted run would have seen next, without decoding what it skips.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from simvlg_video.data.transforms import FrameTransform

log = logging.getLogger(__name__)


class ShardedClipOrder(Sampler[int]):
    """Indices of `num_items` for one rank, one epoch at a time; `drop_last` keeps every rank's count equal."""

    def __init__(self, num_items: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, accumulation: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if batch_size < 1 or accumulation < 1:
            raise ValueError(f"batch_size and accumulation must be >= 1, got {batch_size} and {accumulation}")
        if num_items < batch_size * world_size * accumulation:
            raise ValueError(f"{num_items} clips cannot fill one step of {accumulation} batch(es) of {batch_size} on "
                             f"each of {world_size} processes; lower train.batch_size or add data")
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.accumulation = accumulation
        self.epoch = 0
        self.start_batch = 0

    @property
    def batches_per_epoch(self) -> int:
        """This rank's batches in one epoch: whole optimiser steps only."""
        steps = self.num_items // (self.batch_size * self.world_size * self.accumulation)
        return steps * self.accumulation

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Iterate epoch `epoch` from its batch `start_batch` (0: the whole epoch)."""
        if epoch < 0 or not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"epoch {epoch} / start_batch {start_batch} out of range "
                             f"(an epoch has {self.batches_per_epoch} batches)")
        self.epoch = epoch
        self.start_batch = start_batch

    def epoch_order(self, epoch: int) -> list[int]:
        """Every rank's indices of one epoch, in global order (length: whole global batches only)."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.num_items, generator=generator).tolist()
        else:
            order = list(range(self.num_items))
        return order[: self.batches_per_epoch * self.batch_size * self.world_size]

    def __iter__(self) -> Iterator[int]:
        mine = self.epoch_order(self.epoch)[self.rank :: self.world_size]
        return iter(mine[self.start_batch * self.batch_size :])

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


def clip_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of one clip's train-time crop and flip in one epoch."""
    state = np.random.SeedSequence([seed, epoch, index, 0x7F]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & (2**63 - 1))


class TrainBatches:
    """Iterates (frames (B, T, 3, S, S), captions) forever; clips that failed to decode are counted in `skipped`.

    `loader` must draw its indices from `order` (see `clip_loader(order=...)`).
    """

    def __init__(self, loader, order: ShardedClipOrder, transform: FrameTransform,
                 device: torch.device, seed: int = 0):
        self.loader = loader
        self.order = order
        self.transform = transform
        self.device = device
        self.seed = seed
        self.skipped: list[dict] = []
        self.epoch = 0
        self.batch = 0  # batches of `epoch` already handed out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "skipped": list(self.skipped)}

    def load_state_dict(self, state: dict) -> None:
        """Continue at a saved position (call before iterating)."""
        self.epoch, self.batch, self.skipped = int(state["epoch"]), int(state["batch"]), list(state["skipped"])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, list[str]]]:
        while True:
            self.loader.dataset.set_epoch(self.epoch)
            self.order.set_epoch(self.epoch, start_batch=self.batch)
            for batch in self.loader:
                self.batch += 1
                self.skipped.extend(batch["skipped"])
                if not batch["clip_ids"]:
                    continue
                generators = [clip_generator(self.seed, self.epoch, index) for index in batch["indices"]]
                frames = self.transform(batch["frames"], generator=generators, device=self.device)
                yield frames, batch["captions"]
            self.epoch += 1
            self.batch = 0
