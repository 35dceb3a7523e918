"""Which clips each rank trains on, and the endless stream of training batches they make.

The order is a property of the run, not of the number of processes: each epoch is one shuffle drawn from
(seed, epoch), and global step s reads positions [G*s, G*(s+1)) of it, G = batch x processes x accumulation being
the run's global batch. Rank r takes every world_size-th position, so batch k of every rank together is exactly
batch k of a single process whose batch is world_size times larger, and an epoch holds whole optimiser steps.
The crop and flip of each clip come from (seed, epoch, clip index) too, so runs on different numbers of processes,
or accumulating over other numbers of micro-batches, see the same clips, cropped alike, at the same step.

The position (epoch, clips of it handed out over all ranks) is therefore global: a run resumed at it on any number
of processes sees exactly the clips the interrupted run would have seen next, without decoding what it skips.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from simvlg_video.data.dataset import TooManySkippedClips
from simvlg_video.data.images import decode_jpegs
from simvlg_video.data.shard_progress import StreamPosition, StreamWork, check_disjoint, deal, work_left
from simvlg_video.data.shards import TarShardStream
from simvlg_video.data.transforms import FrameTransform
from simvlg_video.train.skipped import SkippedSamples, share_of_skipped

log = logging.getLogger(__name__)


def accumulation_for(global_batch: int, batch_size: int, world_size: int) -> int:
    """The micro-batches per step that keep a run's `global_batch` with `batch_size` clips on each of `world_size`
    processes; ValueError naming the numbers (and those that would fit) when none does."""
    if global_batch % (batch_size * world_size) == 0:
        return global_batch // (batch_size * world_size)
    counts = [n for n in range(1, global_batch + 1) if global_batch % (batch_size * n) == 0]
    sizes = [b for b in range(1, global_batch + 1) if global_batch % (b * world_size) == 0]
    others = (
        f"on {world_size} with train.batch_size={' or '.join(map(str, sizes))}"
        if sizes
        else f"no batch size fits {world_size} processes"
    )
    raise ValueError(
        f"the run's global batch of {global_batch} clips is not a whole number of micro-batches of "
        f"train.batch_size={batch_size} on each of {world_size} process(es): it continues on "
        f"{' or '.join(map(str, counts)) or 'no number of'} process(es) with that batch size; {others}"
    )


class EpochClipOrder(Sampler[int]):
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
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.set_accumulation(accumulation)
        self.epoch = 0
        self.start_batch = 0

    def set_accumulation(self, accumulation: int) -> None:
        """Take steps of `accumulation` micro-batches (a run resumed on another number of processes adapts it)."""
        if accumulation < 1:
            raise ValueError(f"accumulation must be >= 1, got {accumulation}")
        if self.num_items < self.batch_size * self.world_size * accumulation:
            raise ValueError(
                f"{self.num_items} clips cannot fill one step of {accumulation} batch(es) of {self.batch_size} on "
                f"each of {self.world_size} processes; lower train.batch_size or add data"
            )
        self.accumulation = accumulation

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
        order: EpochClipOrder,
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
        self.batch = 0  # batches of `epoch` this rank has handed out

    def state_dict(self) -> dict:
        """The position, global (clips of the epoch handed out by all ranks together), and this rank's skips."""
        clips = self.batch * self.order.batch_size * self.order.world_size
        return {"epoch": self.epoch, "clips": clips, "skipped": self.skipped.state_dict()}

    def load_state_dicts(self, saved: list[dict], accumulation: int) -> None:
        """Continue where the processes of the interrupted run stood (`saved`: each one's `state_dict`, however
        many there were), taking steps of `accumulation` micro-batches; call before iterating."""
        positions = [(int(state["epoch"]), int(state["clips"])) for state in saved]
        if len(set(positions)) == 1:
            epoch, clips = positions[0]
        elif len(saved) == self.order.world_size:  # a batch whose every clip failed was passed over on some rank
            epoch, clips = positions[self.order.rank]
        else:
            raise ValueError(
                f"the {len(saved)} processes of the interrupted run stood at different places in the data "
                f"(epoch, clips: {sorted(set(positions))}); resume it on {len(saved)} processes"
            )
        self.order.set_accumulation(accumulation)
        per_batch = self.order.batch_size * self.order.world_size
        if clips % per_batch or epoch < 0:
            raise ValueError(
                f"the saved position (epoch {epoch}, {clips} clips into it) is not a whole number of batches of "
                f"{self.order.batch_size} on {self.order.world_size} process(es)"
            )
        self.order.set_epoch(epoch, start_batch=clips // per_batch)
        self.epoch, self.batch = epoch, clips // per_batch
        self.skipped.load_state_dict(
            share_of_skipped([state["skipped"] for state in saved], self.order.rank, self.order.world_size)
        )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, list[str]]]:
        while True:
            self.loader.dataset.set_epoch(self.epoch)
            self.order.set_epoch(self.epoch, start_batch=self.batch)
            for batch in self.loader:
                self.batch += 1
                self.skipped.add({**entry, "epoch": self.epoch} for entry in batch["skipped"])
                if not batch["clip_ids"]:
                    continue
                generators = [clip_generator(self.seed, self.epoch, index) for index in batch["indices"]]
                frames = self.transform(batch["frames"], generator=generators, device=self.device)
                yield frames, batch["captions"]
            self.epoch += 1
            self.batch = 0


class ShardBatches:
    """Iterates (frames (B, T, 3, S, S), captions) forever from a :class:`TarShardStream` run by `loader` (one
    stream per worker, batches handed out in turn); samples that could not be used are counted in `skipped` (and
    listed in its journal, when given one).

    The state is what each stream has left (shards to read, each with the samples of it handed out) and how many
    batches were handed out, which says whose turn is next. Resumed with as many processes and streams
    (data.num_workers), each stream continues its own work: bit for bit the batches the run would have seen. With
    another number, the work of every stream is dealt out over the new ones (`shard_progress.deal`): each epoch
    still hands out every sample once, in another order and other batches.
    """

    def __init__(
        self,
        loader,
        stream: TarShardStream,
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
        self.works = list(stream.works)
        self.positions: list[StreamPosition | None] = [None] * stream.num_streams
        self.handed_out = 0

    def state_dict(self) -> dict:
        left = [
            work_left(work, position, self.stream.own_share(number)).to_dict()
            for number, (work, position) in enumerate(zip(self.works, self.positions))
        ]
        return {
            "shards": {
                "streams": self.stream.num_streams,
                "world_size": self.stream.world_size,
                "work": left,
                "handed_out": self.handed_out,
            },
            "skipped": self.skipped.state_dict(),
        }

    def load_state_dicts(self, saved: list[dict], accumulation: int = 1) -> None:
        """Continue from the states every process of the interrupted run saved (however many there were, with
        however many streams each); call before iterating. `accumulation` does not matter to streams."""
        stream, count = self.stream, len(saved)
        if any("shards" not in state for state in saved):
            raise ValueError(
                "the checkpoint's data position is a manifest's, not shards'; resume with the data it was trained on"
            )
        shards = [state["shards"] for state in saved]
        streams_each = {int(state["streams"]) for state in shards}
        if len(streams_each) != 1 or any(len(state["work"]) != state["streams"] for state in shards):
            raise ValueError(f"the saved shard streams do not add up: {sorted(streams_each)} per process")
        old_streams = streams_each.pop()
        works = [StreamWork.from_dict(work, len(stream.shards)) for state in shards for work in state["work"]]
        num_old = len(works)
        shares = [stream.share(number, num_old) for number in range(num_old)]
        check_disjoint(works, shares)
        num_new = stream.world_size * stream.num_streams
        if num_old != num_new:
            log.info("dealing the shard work of %d stream(s) out over %d", num_old, num_new)
            works = deal(works, shares, num_new)
        first = stream.rank * stream.num_streams
        self.works = works[first : first + stream.num_streams]
        self.positions = [None] * stream.num_streams
        same_turns = (count, old_streams) == (stream.world_size, stream.num_streams)
        self.handed_out = int(shards[stream.rank]["handed_out"]) if same_turns else 0
        self.skipped.load_state_dict(
            share_of_skipped([state["skipped"] for state in saved], stream.rank, stream.world_size)
        )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, list[str]]]:
        self.stream.resume(self.works, first_stream=self.handed_out)  # read by the workers the loader starts
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
                epoch, _, sample = batch["keys"][i]
                lost.append(
                    {
                        "clip_id": name,
                        "video": name.rsplit(":", 1)[0],
                        "reason": image,
                        "epoch": epoch,
                        "sample": sample,
                    }
                )
                continue
            if image.dim() == 3:  # decoded here: one picture, as many frames as a clip has
                image = image.expand(self.stream.reading.num_frames, -1, -1, -1)
            frames.append(image)
            captions.append(batch["captions"][i])
            keys.append(batch["keys"][i])
        return frames, captions, keys, lost
