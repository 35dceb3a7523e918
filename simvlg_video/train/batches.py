"""Endless training batches from a clip loader: epochs re-seeded, frames transformed on the model's device."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader

from simvlg_video.data.transforms import FrameTransform

log = logging.getLogger(__name__)


class TrainBatches:
    """Iterates (frames (B, T, 3, S, S), captions) forever; clips that failed to decode are counted in `skipped`."""

    def __init__(self, loader: DataLoader, transform: FrameTransform, device: torch.device, seed: int = 0):
        self.loader = loader
        self.transform = transform
        self.device = device
        self.generator = torch.Generator().manual_seed(seed)
        self.skipped: list[dict] = []
        self.epoch = 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, list[str]]]:
        while True:
            self.loader.dataset.set_epoch(self.epoch)
            for batch in self.loader:
                self.skipped.extend(batch["skipped"])
                if not batch["clip_ids"]:
                    continue
                frames = self.transform(batch["frames"], generator=self.generator, device=self.device)
                yield frames, batch["captions"]
            self.epoch += 1
