"""How far shard streams have got, as progress per shard, and that progress dealt out again over another number of
streams.

In each epoch a stream reads a list of shards: its own share of the epoch's shard order, or, after a resume on
another number of streams, the share it was dealt. What a stream has left is its :class:`StreamWork`: for its
current epoch (and any later epoch it was dealt explicitly), the shards still to read, each with how many of its
samples, in the shard's seeded shuffle order, were already handed out. Samples waiting in a shuffle buffer were not
handed out: re-reading the shard and passing over that many refills the buffer exactly as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# (shard: its index in the run's shard list, samples of it already handed out)
Item = tuple[int, int]
# The shards of an epoch that a stream reads when nobody dealt it others: (epoch) -> shard indices, in order.
OwnShare = Callable[[int], list[int]]


@dataclass(frozen=True)
class StreamPosition:
    """How far a stream has got: in `epoch`, the `shard`-th shard of the list it reads then, of which `sample`
    samples have been handed out."""

    epoch: int = 0
    shard: int = 0
    sample: int = 0


@dataclass(frozen=True)
class StreamWork:
    """What a stream has left: `queues[i]` are the shards it reads in epoch `epoch + i`, in order; after the last
    queue it reads its own share of every epoch. `StreamWork()` is a stream that has not started."""

    epoch: int = 0
    queues: tuple[tuple[Item, ...], ...] = ()

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "queues": [[list(item) for item in queue] for queue in self.queues]}

    @classmethod
    def from_dict(cls, saved: Any, num_shards: int) -> StreamWork:
        """A saved work checked against the run's `num_shards` (a checkpoint is untrusted): ValueError naming what
        does not fit."""
        if not isinstance(saved, dict) or not isinstance(saved.get("epoch"), int) or saved["epoch"] < 0:
            raise ValueError(
                f"a stream's saved work must be {{'epoch': int >= 0, 'queues': [...]}}, got {saved!r:.200}"
            )
        queues = saved.get("queues")
        if not isinstance(queues, list):
            raise ValueError(f"a stream's saved 'queues' must be a list, got {type(queues).__name__}")
        parsed = []
        for queue in queues:
            if not isinstance(queue, list):
                raise ValueError(f"a stream's saved queue must be a list of [shard, samples], got {queue!r:.200}")
            items = []
            for item in queue:
                if not (isinstance(item, list) and len(item) == 2 and all(type(value) is int for value in item)):
                    raise ValueError(f"a saved shard of a stream's work must be [shard, samples], got {item!r:.200}")
                if not (0 <= item[0] < num_shards and item[1] >= 0):
                    raise ValueError(
                        f"a stream's saved work names shard {item[0]} ({item[1]} samples handed out) of a run of "
                        f"{num_shards} shards"
                    )
                items.append((item[0], item[1]))
            parsed.append(tuple(items))
        return cls(saved["epoch"], tuple(parsed))


def shards_to_read(work: StreamWork, epoch: int, own_share: OwnShare) -> tuple[Item, ...]:
    """The shards a stream with `work` reads in `epoch` (an epoch it has reached), each with the samples of it
    already handed out."""
    index = epoch - work.epoch
    if index < len(work.queues):
        return work.queues[index]
    return tuple((shard, 0) for shard in own_share(epoch))


def reads_own_share(work: StreamWork, epoch: int) -> bool:
    """Whether the stream reads its own share of `epoch` whole (no queue was dealt to it for that epoch)."""
    return epoch - work.epoch >= len(work.queues)


def work_left(work: StreamWork, position: StreamPosition | None, own_share: OwnShare) -> StreamWork:
    """What a stream that started with `work` has left once it has handed out up to `position` (None: nothing)."""
    if position is None:
        return work
    items = shards_to_read(work, position.epoch, own_share)
    current = ((items[position.shard][0], position.sample), *items[position.shard + 1 :])
    later = work.queues[position.epoch - work.epoch + 1 :]
    return StreamWork(position.epoch, (current, *later))


def check_disjoint(works: list[StreamWork], own_shares: list[OwnShare]) -> None:
    """Refuse works in which two streams would read the same shard in the same epoch (a checkpoint is untrusted)."""
    for epoch in range(min(w.epoch for w in works), _last_dealt_epoch(works) + 1):
        seen: set[int] = set()
        for work, own_share in zip(works, own_shares):
            for shard, _ in shards_to_read(work, epoch, own_share) if epoch >= work.epoch else ():
                if shard in seen:
                    raise ValueError(f"the saved stream positions read shard {shard} twice in epoch {epoch}")
                seen.add(shard)


def deal(works: list[StreamWork], own_shares: list[OwnShare], num_streams: int) -> list[StreamWork]:
    """The work of `works` (one per old stream, with its own share) dealt out to `num_streams` new streams.

    For each epoch some old stream has reached and not every one has left behind, the shards still to read (those
    begun, with their samples handed out, then those untouched) go round the new streams in turn; from the next
    epoch on, every new stream reads its own share. Within an epoch no shard is read by two streams, and a shard
    begun continues after the samples it had handed out: each sample of the epoch is handed out once.
    """
    first, last = min(w.epoch for w in works), _last_dealt_epoch(works)
    dealt: list[list[tuple[Item, ...]]] = [[] for _ in range(num_streams)]
    for epoch in range(first, last + 1):
        left: list[Item] = []
        for work, own_share in zip(works, own_shares):
            if epoch >= work.epoch:
                left += shards_to_read(work, epoch, own_share)
        for stream in range(num_streams):
            dealt[stream].append(tuple(left[stream::num_streams]))
    return [StreamWork(first, tuple(queues)) for queues in dealt]


def _last_dealt_epoch(works: list[StreamWork]) -> int:
    """The last epoch some stream has an explicit queue for (below the first epoch when none has)."""
    return max(w.epoch + len(w.queues) - 1 for w in works)
