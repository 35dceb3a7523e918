"""The clips of a run, as the `data=` configs describe them: which manifest (a dataset's, or a synthetic set
generated once into a cache folder), how its videos are read, and how training frames are augmented.

Every `configs/data/*.yaml` instantiates :class:`ClipData`; its defaults are those of the real video datasets.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from simvlg_video.data.dataset import DEFAULT_MAX_SKIP_FRACTION, ClipReading, FrameSampler
from simvlg_video.data.limits import (
    DEFAULT_DECODE_MEMORY_GIB,
    DEFAULT_DECODE_TIMEOUT,
    DEFAULT_MAX_MEMBER_BYTES,
    DEFAULT_MAX_PIXELS,
)
from simvlg_video.data.manifest import ClipRecord, read_manifest, write_manifest
from simvlg_video.data.probe import probe_paths
from simvlg_video.data.sampling import needed_fields
from simvlg_video.data.shards import ShardReading
from simvlg_video.data.transforms import FrameTransform
from simvlg_video.errors import UserError

MANIFEST = "manifest.jsonl"


class DataConfigError(UserError, ValueError):
    """The `data:` settings do not name clips that exist."""


@dataclass
class FrameReading:
    """The `data:` settings that say how a clip's frames are read, in training and in captioning alike: a run's
    `data:` (ClipData) holds them, and so does the `inference:` a model stores (simvlg_video.eval.inference)."""

    num_frames: int = 4  # frames per clip (the reference recipe's 4)
    backend: str = "auto"  # nvdec on a GPU with PyNvVideoCodec, else decord; PyAV when those fail on a file
    decode_timeout: float | None = DEFAULT_DECODE_TIMEOUT  # seconds a probe or decode may take before its process
    # is killed and the clip skipped; None: no limit (and no decode process: no memory limit either)
    decode_memory_gib: float | None = DEFAULT_DECODE_MEMORY_GIB  # address space a decode process may map; a file
    # that needs more is skipped; None: no limit
    max_pixels: int | None = DEFAULT_MAX_PIXELS  # the largest image or video frame, width x height, checked from
    # the header before decoding; a larger one is skipped; None: no limit
    num_workers: int = 2  # loader processes per process, for training and evaluation loaders alike

    def clip_reading(self, max_skip_fraction: float) -> ClipReading:
        """How the loaders read clips with these settings; a batch losing more than `max_skip_fraction` of its clips
        raises."""
        return ClipReading(
            self.num_frames,
            self.backend,
            self.decode_timeout,
            max_skip_fraction,
            max_pixels=self.max_pixels,
            decode_memory_gib=self.decode_memory_gib,
        )


@dataclass
class ClipData(FrameReading):
    """`data:` of a run. Give `manifest` (real datasets: `${data.root}/manifest.checked.jsonl`, written by the
    dataset converter and `check_videos`), or `synthetic`: a generator config that writes the set into `cache_dir`."""

    _target_: str = field(default="simvlg_video.data.clips.ClipData", repr=False)
    _recursive_: bool = field(default=False, repr=False)  # `synthetic` is instantiated only when it must generate
    root: str | None = None  # a dataset's folder, as given to `data_tools.convert --root`
    manifest: str | None = None
    synthetic: Any = None  # `_target_` of a generator taking `out_dir` (data_tools.make_shapes.make_shapes_dataset)
    cache_dir: str = ".cache/synthetic"  # where a synthetic set is generated, one sub-folder per generator setting
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES  # the largest member of a shard (an encoded image, a caption);
    # a sample with a larger one is skipped unread
    max_skip_fraction: float = DEFAULT_MAX_SKIP_FRACTION  # a training batch that loses more than this share of its
    # clips to unreadable videos stops the run
    hflip: bool = True  # the reference flips; these datasets' captions rarely say left or right
    crop_scale: tuple[float, float] = (0.5, 1.0)  # RandomResizedCrop area range (the reference's)
    train_split: str = "train"
    shards: str | None = None  # WebDataset tar shards to train on in place of the manifest's train split
    # (`/data/cc3m/{00000..00331}.tar`, see shards.py); the manifest then only holds what is evaluated
    shuffle_buffer: int = 1000  # samples of a shard shuffled together
    image_decode: str = "auto"  # JPEGs of shards decoded by: loader (Pillow, in the workers) | device (torchvision,
    # a batch at once on the model's device: nvJPEG on a GPU) | auto (device on a GPU, else loader)

    @property
    def reading(self) -> ClipReading:
        return self.clip_reading(self.max_skip_fraction)

    def shard_reading(self, device: torch.device) -> ShardReading:
        """How shard samples are read for a model on `device`."""
        if self.image_decode not in ("auto", "loader", "device"):
            raise DataConfigError(f"data.image_decode must be auto, loader or device, got {self.image_decode!r}")
        on_device = self.image_decode == "device" or (self.image_decode == "auto" and device.type == "cuda")
        return ShardReading(
            self.num_frames,
            self.shuffle_buffer,
            decode_on_device=on_device,
            max_pixels=self.max_pixels,
            max_member_bytes=self.max_member_bytes,
            decode_timeout=self.decode_timeout,
            decode_memory_gib=self.decode_memory_gib,
        )

    def train_transform(self, image_size: int) -> FrameTransform:
        """Training-time crops (and flips where the data allows them) at the model's input size."""
        return FrameTransform(size=image_size, train=True, hflip=self.hflip, scale=tuple(self.crop_scale))

    def manifest_path(self) -> Path:
        """`manifest` when set (it must exist), else the synthetic set for these settings, generated if absent."""
        if self.manifest:
            path = Path(self.manifest).expanduser()
            if not path.is_file():
                raise DataConfigError(
                    f"data.manifest: {path} does not exist (a dataset's manifest is written by "
                    "simvlg_video.data_tools.convert, then checked by data_tools.check_videos)"
                )
            return path
        if self.synthetic is None:
            raise DataConfigError(
                "data.manifest and data.synthetic are both null: set data.manifest to a manifest "
                "file (or choose a data config that has one, e.g. data=msrvtt data.root=FOLDER)"
            )
        settings = OmegaConf.to_container(OmegaConf.create(self.synthetic), resolve=True)
        key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
        out_dir = Path(self.cache_dir).expanduser() / key
        manifest = out_dir / MANIFEST
        if not manifest.is_file():  # the generator writes the manifest last, so its presence means complete
            instantiate(self.synthetic, out_dir=out_dir)
        return manifest

    def records(self, split: str | None = None) -> list[ClipRecord]:
        return read_manifest(self.manifest_path(), split)

    def manifest_for(self, samplers: Iterable[FrameSampler], workers: int | None = None) -> Path:
        """The manifest with every field the frame samplers need (`sampling.needed_fields`).

        Missing fields are probed once, in parallel, into `<manifest>.probed-<content hash>.jsonl` beside it, which
        later runs reuse; a clip that still lacks one (its video cannot be read) is refused, named, before anything
        trains.
        """
        manifest = self.manifest_path()
        needed = {
            (field, getattr(sampler, "func", sampler).__name__)
            for sampler in samplers
            for field in needed_fields(sampler)
        }
        records = read_manifest(manifest)
        videos = [record for record in records if not record.is_image]  # an image is one frame: nothing to probe
        if not any(getattr(record, field) is None for record in videos for field, _ in needed):
            return manifest
        digest = hashlib.sha1(manifest.read_bytes()).hexdigest()[:10]
        probed = manifest.with_name(f"{manifest.stem}.probed-{digest}.jsonl")
        if not probed.is_file():
            found = probe_paths(
                [r.video_path for r in videos],
                workers or os.cpu_count() or 1,
                self.decode_timeout or 600.0,
                memory_gib=self.decode_memory_gib,
                max_pixels=self.max_pixels,
            )
            write_manifest(
                probed,
                [
                    dataclasses.replace(r, **found[r.video_path].record_fields())
                    if r.video_path in found and not isinstance(found[r.video_path], str)
                    else r
                    for r in records
                ],
            )
        lacking = [
            (record, field, sampler)
            for record in read_manifest(probed)
            if not record.is_image
            for field, sampler in sorted(needed)
            if getattr(record, field) is None
        ]
        if lacking:
            shown = "; ".join(f"{r.clip_id} ({r.video_path})" for r, _, _ in lacking[:5])
            _record, field, sampler = lacking[0]
            raise DataConfigError(
                f"sampler {sampler} needs `{field}`, which {len(lacking)} clip(s) of {manifest} lack even after "
                f"probing (their videos cannot be read): {shown}. Drop them with "
                f"`python -m simvlg_video.data_tools.check_videos {manifest}`, or choose another sampler"
            )
        return probed
