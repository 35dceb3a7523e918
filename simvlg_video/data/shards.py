"""Image-caption pairs streamed from WebDataset tar shards, in the layout img2dataset writes for CC3M, CC12M and LAION.

A shard is a tar whose members share a key per sample: `{key}.jpg` (or .jpeg, .png, .webp) with `{key}.txt` (the
caption) or `{key}.json` (img2dataset's metadata, whose "caption" is used when there is no .txt). A shard list is
brace-expanded (`/data/cc3m/{00000..00331}.tar`, several joined with `::`) or a folder of .tar files, and read with
the `webdataset` package.

Every rank runs `num_streams` streams (one per loader worker); stream g of the G = ranks x streams reads shards g,
g + G, ... of each epoch's shard order, so no two streams read the same shard in an epoch and the data splits over
ranks and workers without coordination. Inside a shard, samples pass through a shuffle buffer. The shard order, the
buffer's draws and each sample's crop hang off (seed, epoch, shard, sample), so what a stream has left (its
:class:`~simvlg_video.data.shard_progress.StreamWork`: shards to read, each with the samples of it already handed
out) is its whole state: a stream restarted with it yields exactly what it would have yielded next, re-reading a
shard begun up to there without decoding a single image, and that work can be dealt out again over another number
of streams (`shard_progress.deal`).

A sample whose image is missing or does not decode, or that has no caption, is skipped and listed with its reason,
as an unreadable video is; so is a sample with two members of the same name (`k.jpg k.txt k.jpg`), one with a
member over `max_member_bytes` (passed over unread), one whose image is over the pixel limit (seen in its header)
and the unread rest of a truncated shard. Images are decoded under the same time and memory limits as videos.
"""

from __future__ import annotations

import json
import logging
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from simvlg_video.data.decode import VideoDecodeError
from simvlg_video.data.decode_guard import DecodeGuard
from simvlg_video.data.images import image_from_bytes, is_jpeg, jpeg_header
from simvlg_video.data.limits import DEFAULT_DECODE_MEMORY_GIB, DEFAULT_MAX_MEMBER_BYTES, DEFAULT_MAX_PIXELS
from simvlg_video.data.shard_progress import OwnShare, StreamPosition, StreamWork, reads_own_share, shards_to_read
from simvlg_video.errors import UserError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
# A member's name is its sample key (folders included) up to the first dot of the file name, then its extension.
_MEMBER_NAME = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_METADATA = re.compile(r"__[^/]*__($|/)")  # tar members that hold no sample (as WebDataset writers name them)
T = TypeVar("T")


class ShardError(UserError, ValueError):
    """The shard list names files that are not there, or too few shards to feed every stream."""


def list_shards(pattern: str) -> list[str]:
    """Every shard `pattern` names, each checked to be a file: braces expanded and `::` joining lists
    (`/data/cc3m/{00000..00331}.tar`), or a folder standing for every .tar in it."""
    from webdataset.shardlists import expand_urls

    if Path(pattern).expanduser().is_dir():
        shards = sorted(str(path) for path in Path(pattern).expanduser().glob("*.tar"))
    else:
        shards = [str(Path(url).expanduser()) if "://" not in url else url for url in expand_urls(pattern) if url]
    if not shards:
        raise ShardError(f"data.shards={pattern!r} names no shards")
    missing = [url for url in shards if "://" not in url and not Path(url).is_file()]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ShardError(f"data.shards={pattern!r}: {len(missing)} of {len(shards)} shard(s) do not exist: {shown}")
    return shards


def stream_shards(num_shards: int, seed: int, epoch: int, stream: int, num_streams: int) -> list[int]:
    """The shards (indices of the full list) that global stream `stream` of `num_streams` reads in `epoch`."""
    order = torch.randperm(num_shards, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
    return order[stream::num_streams]


def buffered_shuffle(items: Iterable[T], buffer_size: int, rng: np.random.Generator) -> Iterator[T]:
    """`items` in an order shuffled through a buffer of `buffer_size` (1: unshuffled), as streams must: memory
    stays bounded however long the input, and the order depends only on the input and the generator."""
    buffer: list[T] = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= buffer_size:
            chosen = int(rng.integers(len(buffer)))
            buffer[chosen], buffer[-1] = buffer[-1], buffer[chosen]
            yield buffer.pop()
    for chosen in rng.permutation(len(buffer)):
        yield buffer[chosen]


def shard_samples(url: str, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> Iterator[dict[str, Any]]:
    """The samples of one shard, grouped by key ({"__key__", "__url__", "jpg", "txt", ...} with bytes values), in
    tar order. A sample that cannot be used carries "__error__" instead of being dropped, so that every sample keeps
    its place in the count a resumed stream skips by: two members with one name, a member over `max_member_bytes`
    (passed over unread), and the unread rest of a shard that breaks off (the last entry)."""
    sample: dict[str, Any] | None = None
    try:
        for name, data, problem in _members(url, max_member_bytes):
            match = _MEMBER_NAME.match(name)
            if match is None:
                continue
            key, extension = match.group(1), match.group(2).lower()
            if sample is None or key != sample["__key__"]:
                if sample is not None:
                    yield sample
                sample = {"__key__": key, "__url__": url}
            if "__error__" in sample:
                continue
            if problem is not None:
                sample = {"__key__": key, "__url__": url, "__error__": problem}
            elif extension in sample:
                sample = {"__key__": key, "__url__": url, "__error__": f"two members named {name} in the shard"}
            else:
                sample[extension] = data
    except (tarfile.TarError, OSError, EOFError, ValueError) as error:  # ends the shard; what was read is kept
        if sample is not None:
            yield sample
            sample = None
        yield {"__key__": "(rest of shard)", "__url__": url, "__error__": f"the shard breaks off: {error}"}
    if sample is not None:
        yield sample


def _members(url: str, max_member_bytes: int) -> Iterator[tuple[str, bytes | None, str | None]]:
    """(name, bytes, None) of each regular file in a tar stream, or (name, None, why) for one over the size cap,
    which is passed over without being read into memory."""
    from webdataset.gopen import gopen

    with gopen(url, "rb") as stream, tarfile.open(fileobj=stream, mode="r|*") as archive:
        for member in archive:
            if not member.isreg() or _METADATA.match(member.name):
                continue
            if member.size > max_member_bytes:
                too_large = f"member {member.name} is {member.size:,} bytes, over the limit of {max_member_bytes:,}"
                yield member.name, None, f"{too_large} (data.max_member_bytes)"
            else:
                yield member.name, archive.extractfile(member).read(), None
            archive.members = []  # a streamed archive would otherwise remember every member


def sample_caption(sample: dict[str, Any]) -> str:
    """The caption of a shard sample: its .txt, else its .json's "caption"; "" when it has neither."""
    if "txt" in sample:
        return sample["txt"].decode("utf-8", errors="replace").strip()
    if "json" in sample:
        try:
            caption = json.loads(sample["json"]).get("caption")
        except (ValueError, AttributeError):
            return ""
        return caption.strip() if isinstance(caption, str) else ""
    return ""


@dataclass(frozen=True)
class ShardReading:
    """How shard samples become training items: frames per clip (an image fills them all), the shuffle buffer,
    and whether JPEGs are decoded in the loader (Pillow) or handed over encoded, for the model's device."""

    num_frames: int = 1
    shuffle_buffer: int = 1000
    decode_on_device: bool = False
    max_pixels: int | None = DEFAULT_MAX_PIXELS  # the largest image, from its header (limits.py)
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES  # the largest tar member, passed over unread
    decode_timeout: float | None = None  # seconds one image may take, in a decode process (None: in the worker)
    decode_memory_gib: float | None = DEFAULT_DECODE_MEMORY_GIB  # the decode process's address space


class TarShardStream(IterableDataset):
    """This rank's endless training batches from tar shards; a DataLoader runs one stream in each of its
    `num_streams` workers (`batch_size=None`: the stream makes the batches), and hands them out in turn.

    A batch: {"frames": [uint8 (T, H, W, 3)] or, decoded on the device, {"jpegs", "orientations"}, "captions",
    "keys": [(epoch, shard, sample)], "names", "skipped": [{clip_id, video, reason, epoch, sample}], "stream",
    "position"} (the stream's :class:`StreamPosition` after it). Call :meth:`resume` before the loader starts its
    workers to continue from saved work.
    """

    def __init__(
        self,
        shards: list[str],
        batch_size: int,
        reading: ShardReading,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_streams: int = 1,
    ) -> None:
        if len(shards) < world_size * num_streams:
            raise ShardError(
                f"{len(shards)} shard(s) cannot feed {world_size} process(es) x {num_streams} loader "
                f"stream(s) (data.num_workers, at least 1): every stream needs a shard of its own; "
                f"lower data.num_workers or write smaller shards"
            )
        if batch_size < 1 or reading.shuffle_buffer < 1:
            raise ValueError(
                f"batch_size and shuffle_buffer must be >= 1, got {batch_size} and {reading.shuffle_buffer}"
            )
        self.shards = list(shards)
        self.batch_size = batch_size
        self.reading = reading
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.num_streams = num_streams
        self.works = [StreamWork()] * num_streams
        self.first_stream = 0
        self.decoder = DecodeGuard(
            reading.decode_timeout, reading.decode_memory_gib, preload=("simvlg_video.data.images",)
        )  # each loader worker starts its own decode process on first use

    def share(self, global_stream: int, num_global: int) -> OwnShare:
        """The shards global stream `global_stream` of `num_global` reads in an epoch: (epoch) -> shards."""
        return lambda epoch: stream_shards(len(self.shards), self.seed, epoch, global_stream, num_global)

    def own_share(self, stream: int) -> OwnShare:
        """The shards this rank's stream `stream` reads in an epoch nobody dealt it others of."""
        return self.share(self.rank * self.num_streams + stream, self.world_size * self.num_streams)

    def resume(self, works: list[StreamWork], first_stream: int) -> None:
        """Start each stream with its work, worker 0 playing stream `first_stream` (the one whose turn is next)."""
        if len(works) != self.num_streams:
            raise ValueError(f"{len(works)} saved stream works for {self.num_streams} streams")
        self.works = list(works)
        self.first_stream = first_stream % self.num_streams

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = get_worker_info()
        workers = worker.num_workers if worker is not None else 1
        if workers != self.num_streams:
            raise RuntimeError(f"a TarShardStream of {self.num_streams} streams runs in {workers} loader workers")
        stream = ((worker.id if worker is not None else 0) + self.first_stream) % self.num_streams
        return self.batches(stream, self.works[stream])

    def batches(self, stream: int, work: StreamWork) -> Iterator[dict[str, Any]]:
        """The batches of this rank's stream `stream` with `work` left, forever."""
        frames, captions, keys, names, skipped = [], [], [], [], []
        readable_in_epoch, epoch = 0, work.epoch
        for position, key, sample in self.samples(stream, work):
            if position.epoch != epoch:
                if reads_own_share(work, epoch) and readable_in_epoch == 0:
                    raise ShardError(
                        f"a whole epoch of stream {stream} held no readable sample; check the shards "
                        f"(e.g. {self.shards[0]})"
                    )
                readable_in_epoch, epoch = 0, position.epoch
            name = f"{sample['__url__']}:{sample['__key__']}"
            item = self.item(sample, name)
            if isinstance(item, str):
                logger.warning("skipping %s: %s", name, item)
                skipped.append(
                    {
                        "clip_id": sample["__key__"],
                        "video": sample["__url__"],
                        "reason": item,
                        "epoch": key[0],
                        "sample": key[2],
                    }
                )
                continue
            readable_in_epoch += 1
            frames.append(item)
            captions.append(sample_caption(sample))
            keys.append(key)
            names.append(name)
            if len(frames) == self.batch_size:
                images = (
                    {"jpegs": [f[0] for f in frames], "orientations": [f[1] for f in frames]}
                    if self.reading.decode_on_device
                    else frames
                )
                yield {
                    "frames": images,
                    "captions": captions,
                    "keys": keys,
                    "names": names,
                    "skipped": skipped,
                    "stream": stream,
                    "position": asdict(position),
                }
                frames, captions, keys, names, skipped = [], [], [], [], []

    def samples(self, stream: int, work: StreamWork) -> Iterator[tuple[StreamPosition, tuple, dict]]:
        """(position after it, (epoch, shard, sample) key, sample) of every sample a stream with `work` left reads."""
        own_share = self.own_share(stream)
        epoch = work.epoch
        while True:
            for number, (shard, handed_out) in enumerate(shards_to_read(work, epoch, own_share)):
                rng = np.random.default_rng([self.seed, epoch, shard, 0x5A])
                samples = shard_samples(self.shards[shard], self.reading.max_member_bytes)
                for ordinal, sample in enumerate(buffered_shuffle(samples, self.reading.shuffle_buffer, rng)):
                    if ordinal >= handed_out:  # a resumed stream passes over what it had handed out, undecoded
                        yield StreamPosition(epoch, number, ordinal + 1), (epoch, shard, ordinal), sample
            epoch += 1

    def item(self, sample: dict[str, Any], name: str) -> torch.Tensor | tuple[bytes, int] | str:
        """A sample's frames (T, H, W, 3), or (JPEG bytes, EXIF orientation) for the device, or why it is skipped."""
        if "__error__" in sample:
            return sample["__error__"]
        extension = next((ext for ext in IMAGE_EXTENSIONS if ext in sample), None)
        if extension is None:
            return f"no image ({'/'.join(IMAGE_EXTENSIONS)}) in the sample"
        if not sample_caption(sample):
            return 'no caption (.txt, or .json with a "caption")'
        data = sample[extension]
        try:
            if self.reading.decode_on_device and is_jpeg(data):
                return data, jpeg_header(data, name, self.reading.max_pixels)
            image = self.decoder(name, image_from_bytes, data, name, max_pixels=self.reading.max_pixels)
        except VideoDecodeError as error:
            return error.reason
        frames = torch.from_numpy(image).expand(self.reading.num_frames, -1, -1, -1)
        return (frames, 0) if self.reading.decode_on_device else frames
