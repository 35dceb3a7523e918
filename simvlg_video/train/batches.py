"""Endless training batches from a clip loader: epochs re-seeded, frames transformed on the model's device.

The position (epoch, batches handed out in it) is the whole state: the sampler's order, each clip's frames and
caption and each clip's crop are drawn from (seed, epoch, clip index), so a run resumed at a position sees exactly
the batches the interrupted run would have seen next.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from simvlg_video.data.transforms import FrameTransform
from simvlg_video.train.sampler import ShardedEpochSampler

log = logging.getLogger(__name__)


def clip_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of one clip's train-time crop and flip in one epoch."""
    state = np.random.SeedSequence([seed, epoch, index, 0x7F]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & (2**63 - 1))


class TrainBatches:
    """Iterates (frames (B, T, 3, S, S), captions) forever; clips that failed to decode are counted in `skipped`.

    `loader` must draw its indices from `sampler` (see `build_loader(sampler=...)`).
    """

    def __init__(self, loader: DataLoader, sampler: ShardedEpochSampler, transform: FrameTransform,
                 device: torch.device, seed: int = 0):
        self.loader = loader
        self.sampler = sampler
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
            self.sampler.set_epoch(self.epoch, start_batch=self.batch)
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
