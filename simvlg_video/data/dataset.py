"""Clips as a torch Dataset: manifest record -> sampled frame indices -> decoded uint8 frames + captions.

Resizing and normalising happen later, batched on the model's device (see ``transforms.py``); loaders only
decode. A clip that cannot be decoded (missing, empty, truncated or not a video, not a regular file, no video
stream, a window past the end, frames over the pixel limit, a decode over the time or memory limit) comes back as
an error item: ``collate_clips`` drops it from the batch
and lists it under ``skipped``, and one warning line names the file and the reason. A batch that loses more than
``max_skip_fraction`` of its clips raises :class:`TooManySkippedClips` with the list: that is broken data, not a
broken file.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from simvlg_video.data.clip_reader import ClipReader, resolve_backend
from simvlg_video.data.decode import VideoDecodeError
from simvlg_video.data.limits import DEFAULT_DECODE_MEMORY_GIB, DEFAULT_DECODE_TIMEOUT, DEFAULT_MAX_PIXELS
from simvlg_video.data.manifest import ClipRecord
from simvlg_video.data.sampling import ClipWindowError, needed_fields, sample_window
from simvlg_video.errors import UserError

logger = logging.getLogger(__name__)

# A frame sampler as in sampling.py: (num_available, num_frames, rng, *, fps, keyframes) -> sorted frame indices.
FrameSampler = Callable[..., list[int]]

DEFAULT_MAX_SKIP_FRACTION = 0.5


class TooManySkippedClips(UserError, RuntimeError):
    """A batch lost more than the allowed share of its clips; the message lists every one with its reason."""


class VideoClipDataset(Dataset):
    """One item per manifest record: ``{"clip_id", "frames": uint8 (T, H, W, 3), "caption", "captions",
    "frame_indices"}``, or ``{"clip_id", "error", "video"}`` when the video cannot be read.

    Training items draw frames and a caption from a generator seeded by (seed, epoch, index), so results do not
    depend on which worker loads an item or in what order. The epoch lives in shared memory: call
    :meth:`set_epoch` before iterating the loader for that epoch and persistent workers see it too.
    Evaluation items are deterministic: the sampler gets ``rng=None`` and the caption is the first one.

    ``backend``: ``auto`` | ``decord`` | ``pyav`` | ``nvdec`` (see ``clip_reader.py``); with ``nvdec`` (or
    ``auto`` with a GPU and PyNvVideoCodec) frames come back in GPU memory and :func:`build_loader` decodes
    in threads. ``decode_timeout``: seconds one CPU probe or decode (of a video or an image) may take before it is
    abandoned (None: no limit, decoding in the loader process itself); ``decode_memory_gib``: the address space of
    the process that decodes; ``max_pixels``: the largest image or video frame (see ``limits.py``).
    """

    def __init__(
        self,
        records: Sequence[ClipRecord],
        num_frames: int,
        sampler: FrameSampler,
        train: bool,
        seed: int = 0,
        backend: str = "auto",
        decode_timeout: float | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        decode_memory_gib: float | None = DEFAULT_DECODE_MEMORY_GIB,
    ) -> None:
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.records = list(records)
        self.num_frames = num_frames
        self.sampler = sampler
        self.train = train
        self.seed = seed
        self.backend = resolve_backend(backend)
        self.reader = ClipReader(
            self.backend,
            decode_timeout,
            nvdec_fallback=backend == "auto",
            max_pixels=max_pixels,
            decode_memory_gib=decode_memory_gib,
        )
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
            if record.is_image:  # a clip of one still frame, as long as the others
                frame_indices = [0] * self.num_frames
                image = self.reader.read_image(record.video_path)
                frames = torch.from_numpy(image).expand(self.num_frames, -1, -1, -1)
            else:
                source = self.reader.source(record, needed_fields(self.sampler))
                frame_indices = sample_window(
                    self.sampler,
                    self.num_frames,
                    source.num_frames,
                    fps=source.fps,
                    window=(record.start, record.end),
                    keyframes=source.keyframes,
                    rng=rng,
                )
                frames = self.reader.read(record.video_path, frame_indices, source)
        except ClipWindowError as error:
            return self._error_item(index, record, VideoDecodeError(record.video_path, str(error)))
        except VideoDecodeError as error:
            return self._error_item(index, record, error)
        return {
            "index": index,
            "clip_id": record.clip_id,
            "frames": frames,
            "caption": caption,
            "captions": list(record.captions),
            "frame_indices": frame_indices,
        }

    @staticmethod
    def _error_item(index: int, record: ClipRecord, error: VideoDecodeError) -> dict[str, Any]:
        logger.warning("skipping clip %s: cannot decode %s: %s", record.clip_id, error.path, error.reason)
        return {"index": index, "clip_id": record.clip_id, "error": error.reason, "video": str(record.video_path)}


def collate_clips(
    items: Sequence[dict[str, Any]], max_skip_fraction: float = DEFAULT_MAX_SKIP_FRACTION
) -> dict[str, Any]:
    """Batch decoded items as lists (clips may differ in size); failed items go to ``skipped`` instead.

    A batch in which every clip failed has empty lists: callers skip it. More than ``max_skip_fraction`` of the
    batch failing raises :class:`TooManySkippedClips`.
    """
    decoded = [item for item in items if "error" not in item]
    skipped = [
        {"clip_id": item["clip_id"], "video": item["video"], "reason": item["error"]}
        for item in items
        if "error" in item
    ]
    if items and len(skipped) > max_skip_fraction * len(items):
        listing = "\n".join(f"  {entry['clip_id']} ({entry['video']}): {entry['reason']}" for entry in skipped)
        raise TooManySkippedClips(
            f"{len(skipped)} of {len(items)} clips in a batch could not be decoded, more than"
            f" max_skip_fraction={max_skip_fraction}:\n{listing}"
        )
    return {
        "indices": [item.get("index") for item in decoded],
        "clip_ids": [item["clip_id"] for item in decoded],
        "frames": [item["frames"] for item in decoded],
        "captions": [item["caption"] for item in decoded],
        "frame_indices": [item["frame_indices"] for item in decoded],
        "references": [item["captions"] for item in decoded],
        "skipped": skipped,
    }


def build_loader(
    dataset: VideoClipDataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    seed: int,
    drop_last: bool = False,
    pin_memory: bool | None = None,
    max_skip_fraction: float = DEFAULT_MAX_SKIP_FRACTION,
    decode_threads: int = 8,
    order: Sampler[int] | None = None,
):
    """Batches of :func:`collate_clips`, shuffled by a generator seeded by ``seed``, or in the order an index sampler
    gives (training: :class:`~simvlg_video.train.batches.EpochClipOrder`; then ``shuffle`` must be False).

    CPU backends: a DataLoader with ``num_workers`` worker processes kept alive across epochs; ``pin_memory``
    (default: when CUDA is present) puts batches in page-locked memory so they reach the GPU asynchronously.
    nvdec: a :class:`~simvlg_video.data.threaded_loader.ThreadedClipLoader` with ``decode_threads`` threads in
    this process, each with its own open hardware decoder (frames are already in GPU memory).
    """
    if not 0 <= max_skip_fraction <= 1:
        raise ValueError(f"max_skip_fraction must be in [0, 1], got {max_skip_fraction}")
    if order is not None and shuffle:
        raise ValueError("give either shuffle=True or an order, not both")
    collate = functools.partial(collate_clips, max_skip_fraction=max_skip_fraction)
    if dataset.backend == "nvdec":
        from simvlg_video.data.threaded_loader import ThreadedClipLoader

        return ThreadedClipLoader(
            dataset,
            batch_size,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
            num_threads=decode_threads,
            collate=collate,
            order=order,
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=order,
        num_workers=num_workers,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=num_workers > 0,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
    )


@dataclass(frozen=True)
class ClipReading:
    """How clips are read: frames per clip, decoder, and what to do with files that do not decode."""

    num_frames: int
    backend: str = "auto"  # auto | decord | pyav | nvdec (see clip_reader.py)
    decode_timeout: float | None = DEFAULT_DECODE_TIMEOUT  # seconds one probe or decode may take; None: no limit,
    # no child process
    max_skip_fraction: float = DEFAULT_MAX_SKIP_FRACTION  # a batch losing more of its clips raises
    max_pixels: int | None = DEFAULT_MAX_PIXELS  # the largest image or video frame (width x height); None: no limit
    decode_memory_gib: float | None = DEFAULT_DECODE_MEMORY_GIB  # address space of a decode process; None: no limit


def clip_loader(
    records: Sequence[ClipRecord],
    reading: ClipReading,
    sampler: FrameSampler,
    *,
    train: bool,
    batch_size: int,
    num_workers: int,
    seed: int = 0,
    order: Sampler[int] | None = None,
    drop_last: bool = False,
    decode_threads: int = 8,
):
    """The one way clips become batches, for training, evaluation, captioning and benchmarks alike (the loader's
    `dataset` is the VideoClipDataset)."""
    dataset = VideoClipDataset(
        records,
        reading.num_frames,
        sampler,
        train=train,
        seed=seed,
        backend=reading.backend,
        decode_timeout=reading.decode_timeout,
        max_pixels=reading.max_pixels,
        decode_memory_gib=reading.decode_memory_gib,
    )
    return build_loader(
        dataset,
        batch_size,
        shuffle=False,
        num_workers=num_workers,
        seed=seed,
        drop_last=drop_last,
        max_skip_fraction=reading.max_skip_fraction,
        decode_threads=decode_threads,
        order=order,
    )
