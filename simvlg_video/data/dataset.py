"""Clips as a torch Dataset: manifest record -> sampled frame indices -> decoded uint8 frames + captions.

Resizing and normalising happen later, batched on the model's device (see ``transforms.py``); workers only
decode. A clip that cannot be decoded comes back as an error item, and ``collate_clips`` drops it from the batch
and reports it, so one broken file never stops a run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from simvlg_video.data.decode import BACKENDS, VideoDecodeError, probe_video, read_frames
from simvlg_video.data.manifest import ClipRecord

logger = logging.getLogger(__name__)

# A sampler as in sampling.py: (num_available, num_frames, rng) -> sorted indices.
Sampler = Callable[[int, int, "np.random.Generator | None"], list[int]]

# Tolerance when turning seconds into frame numbers, so that e.g. 2.0 s at 30 fps is frame 60, not 61.
_TIME_EPSILON = 1e-6


class VideoClipDataset(Dataset):
    """One item per manifest record: ``{"clip_id", "frames": uint8 (T, H, W, 3), "caption", "captions",
    "frame_indices"}``, or ``{"clip_id", "error", "video"}`` when the video cannot be read.

    Training items draw frames and a caption from a generator seeded by (seed, epoch, index), so results do not
    depend on which worker loads an item or in what order. The epoch lives in shared memory: call
    :meth:`set_epoch` before iterating the loader for that epoch and persistent workers see it too.
    Evaluation items are deterministic: the sampler gets ``rng=None`` and the caption is the first one.
    """

    def __init__(
        self,
        records: Sequence[ClipRecord],
        num_frames: int,
        sampler: Sampler,
        train: bool,
        seed: int = 0,
        backend: str = "auto",
    ) -> None:
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if backend != "auto" and backend not in BACKENDS:
            raise ValueError(f"unknown video backend {backend!r}; expected 'auto' or one of {sorted(BACKENDS)}")
        self.records = list(records)
        self.num_frames = num_frames
        self.sampler = sampler
        self.train = train
        self.seed = seed
        self.backend = backend
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws ``__getitem__`` makes (visible to already-started workers)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.train else None
        if not record.captions:  # videos captioned without references (simvlg_video.caption)
            caption = ""
        elif rng is not None:
            caption = record.captions[int(rng.integers(len(record.captions)))]
        else:
            caption = record.captions[0]
        try:
            frame_indices = self._frame_indices(record, rng)
            frames = read_frames(record.video_path, frame_indices, self.backend)
        except VideoDecodeError as error:
            logger.warning("skipping clip %s: cannot decode %s: %s", record.clip_id, error.path, error.reason)
            return {"clip_id": record.clip_id, "error": error.reason, "video": str(record.video_path)}
        return {
            "clip_id": record.clip_id,
            "frames": torch.from_numpy(frames),
            "caption": caption,
            "captions": list(record.captions),
            "frame_indices": frame_indices,
        }

    def _frame_indices(self, record: ClipRecord, rng: np.random.Generator | None) -> list[int]:
        first, stop = self._frame_window(record)
        offsets = self.sampler(stop - first, self.num_frames, rng)
        if len(offsets) != self.num_frames or not all(0 <= offset < stop - first for offset in offsets):
            raise ValueError(f"sampler {self.sampler!r} returned {offsets} for {stop - first} frames and"
                             f" num_frames={self.num_frames}; expected {self.num_frames} indices in range")
        return [first + offset for offset in offsets]

    def _frame_window(self, record: ClipRecord) -> tuple[int, int]:
        """Frame range [first, stop) of the clip: the whole video, or the frames shown between start and end."""
        num_frames, fps = record.num_frames, record.fps
        needs_fps = record.start is not None or record.end is not None
        if num_frames is None or (needs_fps and fps is None):
            info = probe_video(record.video_path, self.backend)
            num_frames = info.num_frames if num_frames is None else num_frames
            fps = info.fps if fps is None else fps
        if not needs_fps:
            first, stop = 0, num_frames
        else:
            first = math.ceil(record.start * fps - _TIME_EPSILON) if record.start is not None else 0
            stop = math.ceil(record.end * fps - _TIME_EPSILON) if record.end is not None else num_frames
            stop = min(stop, num_frames)
        if stop <= first:
            raise VideoDecodeError(record.video_path, f"clip window start={record.start} end={record.end} s holds no"
                                   f" frames of a video with {num_frames} frames at {fps} fps")
        return first, stop


def collate_clips(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch decoded items as lists (clips may differ in size); failed items go to ``skipped`` instead.

    A batch in which every clip failed has empty lists: callers skip it.
    """
    decoded = [item for item in items if "error" not in item]
    return {
        "clip_ids": [item["clip_id"] for item in decoded],
        "frames": [item["frames"] for item in decoded],
        "captions": [item["caption"] for item in decoded],
        "references": [item["captions"] for item in decoded],
        "skipped": [
            {"clip_id": item["clip_id"], "video": item["video"], "reason": item["error"]}
            for item in items
            if "error" in item
        ],
    }


def build_loader(
    dataset: VideoClipDataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    seed: int,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over ``dataset`` batched by :func:`collate_clips`, with its shuffle order drawn from a
    generator seeded by ``seed`` and workers kept alive across epochs."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        collate_fn=collate_clips,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=num_workers > 0,
        drop_last=drop_last,
        pin_memory=pin_memory,
    )
