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
from dataclasses import asdict

import numpy as np
import torch
from torch.utils.data import Sampler

from simvlg_video.data.dataset import TooManySkippedClips
from simvlg_video.data.images import decode_jpegs
from simvlg_video.data.shards import ShardStream, StreamPosition
from simvlg_video.data.transforms import FrameTransform
from simvlg_video.train.skipped import SkippedSamples

log = logging.getLogger(__name__)


class ShardedClipOrder(Sampler[int]):
    """Indices of `num_items` for one rank, one epoch at a time; `drop_last` keeps every rank's count equal."""

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        accumulation: int = 1,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if batch_size < 1 or accumulation < 1:
            raise ValueError(f"batch_size and accumulation must be >= 1, got {batch_size} and {accumulation}")
        if num_items < batch_size * world_size * accumulation:
            raise ValueError(
                f"{num_items} clips cannot fill one step of {accumulation} batch(es) of {batch_size} on "
                f"each of {world_size} processes; lower train.batch_size or add data"
            )
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
            raise ValueError(
                f"epoch {epoch} / start_batch {start_batch} out of range "
                f"(an epoch has {self.batches_per_epoch} batches)"
            )
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


def clip_generator(seed: int, epoch: int, *index: int) -> torch.Generator:
    """The generator of one clip's train-time crop and flip in one epoch (`index`: the clip's, or a shard sample's
    (shard, sample))."""
    state = np.random.SeedSequence([seed, epoch, *index, 0x7F]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & (2**63 - 1))


class TrainBatches:
    """Iterates (frames (B, T, 3, S, S), captions) forever; clips that failed to decode are counted in `skipped`
    (and listed in its journal, when given one).

    `loader` must draw its indices from `order` (see `clip_loader(order=...)`).
    """

    def __init__(
        self,
        loader,
        order: ShardedClipOrder,
        transform: FrameTransform,
        device: torch.device,
        seed: int = 0,
        skipped: SkippedSamples | None = None,
    ):
        self.loader = loader
        self.order = order
        self.transform = transform
        self.device = device
        self.seed = seed
        self.skipped = skipped if skipped is not None else SkippedSamples()
        self.epoch = 0
        self.batch = 0  # batches of `epoch` already handed out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "skipped": self.skipped.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Continue at a saved position (call before iterating)."""
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        self.skipped.load_state_dict(state["skipped"])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, list[str]]]:
        while True:
            self.loader.dataset.set_epoch(self.epoch)
            self.order.set_epoch(self.epoch, start_batch=self.batch)
            for batch in self.loader:
                self.batch += 1
                self.skipped.add(batch["skipped"])
                if not batch["clip_ids"]:
                    continue
                generators = [clip_generator(self.seed, self.epoch, index) for index in batch["indices"]]
                frames = self.transform(batch["frames"], generator=generators, device=self.device)
                yield frames, batch["captions"]
            self.epoch += 1
            self.batch = 0


class ShardBatches:
    """Iterates (frames (B, T, 3, S, S), captions) forever from a :class:`ShardStream` run by `loader` (one stream
    per worker, batches handed out in turn); samples that could not be used are counted in `skipped` (and listed
    in its journal, when given one).

    The state is every stream's position and how many batches were handed out, which says whose turn is next; a
    resumed run must have as many streams (data.num_workers) and processes as the interrupted one.
    """

    def __init__(
        self,
        loader,
        stream: ShardStream,
        transform: FrameTransform,
        device: torch.device,
        seed: int = 0,
        max_skip_fraction: float = 0.5,
        skipped: SkippedSamples | None = None,
    ):
        self.loader = loader
        self.stream = stream
        self.transform = transform
        self.device = device
        self.seed = seed
        self.max_skip_fraction = max_skip_fraction
        self.skipped = skipped if skipped is not None else SkippedSamples()
        self.positions = list(stream.positions)
        self.handed_out = 0

    def state_dict(self) -> dict:
        return {
            "shards": {
                "streams": self.stream.num_streams,
                "world_size": self.stream.world_size,
                "positions": [asdict(position) for position in self.positions],
                "handed_out": self.handed_out,
            },
            "skipped": self.skipped.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue at a saved position (call before iterating); refuses another number of streams or processes."""
        if "shards" not in state:
            raise ValueError(
                "the checkpoint's data position is a manifest's, not shards'; resume with the data it was trained on"
            )
        saved = state["shards"]
        if (saved["streams"], saved["world_size"]) != (self.stream.num_streams, self.stream.world_size):
            raise ValueError(
                f"the run was streaming shards with data.num_workers={saved['streams']} (streams) on "
                f"{saved['world_size']} process(es); resume it with the same, not "
                f"{self.stream.num_streams} on {self.stream.world_size}"
            )
        self.positions = [StreamPosition(**position) for position in saved["positions"]]
        self.handed_out = int(saved["handed_out"])
        self.skipped.load_state_dict(state["skipped"])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, list[str]]]:
        self.stream.resume(self.positions, first_stream=self.handed_out)  # read by the workers the loader starts
        for batch in self.loader:
            self.positions[batch["stream"]] = StreamPosition(**batch["position"])
            self.handed_out += 1
            frames, captions, keys, lost = self._frames(batch)
            self.skipped.add(lost)
            if len(lost) > self.max_skip_fraction * (len(lost) + len(keys)):
                listing = "\n".join(f"  {entry['clip_id']} ({entry['video']}): {entry['reason']}" for entry in lost)
                raise TooManySkippedClips(
                    f"{len(lost)} of the {len(lost) + len(keys)} samples read for a batch could not be "
                    f"used, more than max_skip_fraction={self.max_skip_fraction}:\n{listing}"
                )
            if not keys:
                continue
            generators = [clip_generator(self.seed, *key) for key in keys]
            yield self.transform(frames, generator=generators, device=self.device), captions

    def _frames(self, batch: dict) -> tuple[list[torch.Tensor], list[str], list[tuple], list[dict]]:
        """The batch's frames on the device, JPEGs decoded there in one call, and every sample of it that failed."""
        lost = list(batch["skipped"])
        images = batch["frames"]
        if not isinstance(images, dict):
            return images, batch["captions"], batch["keys"], lost
        encoded = [i for i, image in enumerate(images["jpegs"]) if isinstance(image, bytes)]
        decoded = dict(
            zip(
                encoded,
                decode_jpegs(
                    [images["jpegs"][i] for i in encoded], [images["orientations"][i] for i in encoded], self.device
                ),
            )
        )
        frames, captions, keys = [], [], []
        for i, image in enumerate(images["jpegs"]):
            image = decoded.get(i, image)
            if isinstance(image, str):
                name = batch["names"][i]
                log.warning("skipping %s: %s", name, image)
                lost.append({"clip_id": name, "video": name.rsplit(":", 1)[0], "reason": image})
                continue
            if image.dim() == 3:  # decoded here: one picture, as many frames as a clip has
                image = image.expand(self.stream.reading.num_frames, -1, -1, -1)
            frames.append(image)
            captions.append(batch["captions"][i])
            keys.append(batch["keys"][i])
        return frames, captions, keys, lost
