"""Turn decoded uint8 clips into normalised model input, batched, on whatever device the model runs on.

Frames travel as uint8 (four times smaller than float) and are converted only after moving to the device, so
on a GPU the resize and normalisation run there. Every frame of a clip gets the same crop and the same flip:
a clip is one scene, and per-frame jitter would look like motion.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# RandomResizedCrop gives up drawing a box after this many tries and takes a centred one (as torchvision does).
_CROP_TRIES = 10


class FrameTransform:
    """uint8 clips (T, H, W, 3) -> float32 (B, T, 3, size, size), normalised with ``mean``/``std``.

    Eval (``train=False``): resize the shorter side to ``size`` (bicubic, antialiased), then centre-crop.
    Train: a RandomResizedCrop box (area fraction in ``scale``, aspect ratio in ``ratio``) shared by all frames of
    a clip, resized to ``size``; with ``hflip=True`` also a horizontal flip with probability 0.5 per clip. Flipping
    is off by default because it swaps left and right, which turns "moves left" captions into wrong ones.
    """

    def __init__(
        self,
        size: int = 224,
        train: bool = False,
        hflip: bool = False,
        scale: Sequence[float] = (0.5, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high <= 1, got {tuple(scale)}")
        if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must be (low, high) with 0 < low <= high, got {tuple(ratio)}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values each with std > 0, got mean={tuple(mean)} std={tuple(std)}")
        self.size = size
        self.train = train
        self.hflip = hflip
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def __call__(
        self,
        clips: torch.Tensor | Sequence[torch.Tensor],
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Transform a batch: one (B, T, H, W, 3) uint8 tensor, or a list of (T, H, W, 3) uint8 tensors whose H and
        W may differ. ``generator`` (a CPU ``torch.Generator``, or one per clip so that a clip's crop does not depend
        on which batch it is in) drives the train-time crops and flips; None uses torch's global RNG. ``device`` is
        where the output lives (default: where the input is).

        Each clip crosses to ``device`` once, as uint8 (asynchronously from pinned memory); everything after runs
        there as batched tensor ops: eval resizes all clips of one frame size in one call, train resizes each
        clip's crop, and the flip and the normalisation run over the whole batch at once.
        """
        clip_list = _as_clip_list(clips)
        target = torch.device(device) if device is not None else clip_list[0].device
        moved = [clip.to(target, non_blocking=True).permute(0, 3, 1, 2) for clip in clip_list]  # (T, 3, H, W)
        batch = self._train_batch(moved, generator) if self.train else self._eval_batch(moved)
        mean = torch.tensor(self.mean, device=target).view(1, 1, 3, 1, 1)
        std = torch.tensor(self.std, device=target).view(1, 1, 3, 1, 1)
        return (batch.clamp_(0, 255) / 255 - mean) / std

    def _eval_batch(self, clips: list[torch.Tensor]) -> torch.Tensor:
        """Shorter side to ``size`` (aspect kept), centre crop: one resize per distinct frame size."""
        out: list[torch.Tensor] = [clips[0]] * len(clips)
        by_size: dict[tuple[int, int], list[int]] = {}
        for position, clip in enumerate(clips):
            by_size.setdefault(tuple(clip.shape[-2:]), []).append(position)
        for positions in by_size.values():
            group = torch.stack([clips[p] for p in positions])  # (n, T, 3, H, W) uint8
            frames = _resize(group.flatten(0, 1), [self.size])
            frames = TF.center_crop(frames, [self.size, self.size]).unflatten(0, group.shape[:2])
            for position, clip in zip(positions, frames):
                out[position] = clip
        return torch.stack(out)

    def _train_batch(
        self, clips: list[torch.Tensor], generators: torch.Generator | Sequence[torch.Generator] | None
    ) -> torch.Tensor:
        """One random crop box per clip (shared by its frames) resized to ``size``, then one flip per clip."""
        if isinstance(generators, Sequence):
            if len(generators) != len(clips):
                raise ValueError(f"got {len(generators)} generators for {len(clips)} clips; give one per clip")
        else:
            generators = [generators] * len(clips)
        resized, flips = [], []
        for clip, generator in zip(clips, generators):
            top, left, height, width = self._crop_box(clip.shape[-2], clip.shape[-1], generator)
            resized.append(_resize(clip[..., top : top + height, left : left + width], [self.size, self.size]))
            flips.append(self.hflip and _uniform(generator) < 0.5)
        batch = torch.stack(resized)
        if any(flips):
            flip = torch.tensor(flips, device=batch.device)
            batch[flip] = batch[flip].flip(-1)
        return batch

    def _crop_box(self, height: int, width: int, generator: torch.Generator | None) -> tuple[int, int, int, int]:
        """(top, left, height, width) of a box covering ``scale`` of the area with aspect ratio in ``ratio``."""
        area = height * width
        log_low, log_high = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(_CROP_TRIES):
            box_area = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * _uniform(generator))
            aspect = math.exp(log_low + (log_high - log_low) * _uniform(generator))
            box_width = round(math.sqrt(box_area * aspect))
            box_height = round(math.sqrt(box_area / aspect))
            if 0 < box_width <= width and 0 < box_height <= height:
                top = _randint(height - box_height + 1, generator)
                left = _randint(width - box_width + 1, generator)
                return top, left, box_height, box_width
        # No box fitted (an extreme frame shape): the largest centred box whose aspect ratio is within range.
        frame_aspect = width / height
        box_width, box_height = width, height
        if frame_aspect < self.ratio[0]:
            box_height = round(width / self.ratio[0])
        elif frame_aspect > self.ratio[1]:
            box_width = round(height * self.ratio[1])
        return (height - box_height) // 2, (width - box_width) // 2, box_height, box_width


def _as_clip_list(clips: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Check the input and return it as a list of (T, H, W, 3) uint8 tensors with one shared T."""
    if isinstance(clips, torch.Tensor):
        if clips.ndim != 5:
            raise ValueError(f"a batch tensor must be (B, T, H, W, 3), got shape {tuple(clips.shape)}")
        clip_list = list(clips.unbind(0))
    else:
        clip_list = list(clips)
    if not clip_list:
        raise ValueError("no clips to transform")
    for position, clip in enumerate(clip_list):
        if not isinstance(clip, torch.Tensor) or clip.dtype != torch.uint8 or clip.ndim != 4 or clip.shape[-1] != 3:
            described = f"{clip.dtype} {tuple(clip.shape)}" if isinstance(clip, torch.Tensor) else type(clip).__name__
            raise ValueError(f"clip {position} must be a uint8 tensor (T, H, W, 3), got {described}")
    lengths = sorted({clip.shape[0] for clip in clip_list})
    if len(lengths) > 1:
        raise ValueError(f"all clips in a batch need the same number of frames, got {lengths}")
    return clip_list


def _resize(frames: torch.Tensor, size: list[int]) -> torch.Tensor:
    """Bicubic, antialiased resize of uint8 frames, returned as float in [0, 255] (bicubic may overshoot).

    On the CPU the resize runs on uint8 (torch's vectorised kernel, much faster than float; the result is rounded
    to whole levels); on a GPU it runs in float. The two agree to within one intensity level.
    """
    if frames.device.type == "cpu":
        return TF.resize(frames, size, interpolation=InterpolationMode.BICUBIC, antialias=True).float()
    return TF.resize(frames.float(), size, interpolation=InterpolationMode.BICUBIC, antialias=True)


def _uniform(generator: torch.Generator | None) -> float:
    return torch.rand((), generator=generator).item()


def _randint(high: int, generator: torch.Generator | None) -> int:
    return int(torch.randint(high, (), generator=generator).item())
