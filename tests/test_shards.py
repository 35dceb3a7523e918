"""WebDataset tar shards as img2dataset writes them: listing, the split over ranks and loader streams, the shuffle,
broken samples, exact resume at a sample, and JPEGs decoded in a batch on the model's device."""

from __future__ import annotations

import io
import itertools
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from webdataset import TarWriter

from simvlg_video.data.dataset import TooManySkippedClips
from simvlg_video.data.images import decode_jpegs, image_from_bytes
from simvlg_video.data.shard_progress import StreamPosition, StreamWork, work_left
from simvlg_video.data.shards import (
    ShardError,
    ShardReading,
    TarShardStream,
    buffered_shuffle,
    list_shards,
)
from simvlg_video.data.transforms import FrameTransform
from simvlg_video.data_tools.write_shards import main as write_shards_command
from simvlg_video.errors import InputError
from simvlg_video.train.batches import ShardBatches


def jpeg(seed: int, size: tuple[int, int] = (24, 32), orientation: int = 1) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    if orientation != 1:
        exif[0x0112] = orientation
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90, exif=exif)
    return out.getvalue()


def write_img2dataset_shards(folder: Path, num_shards: int, per_shard: int, seed: int = 0) -> list[str]:
    """Shards as img2dataset lays them out: {key}.jpg, {key}.txt and {key}.json, keys numbered across shards."""
    folder.mkdir(parents=True, exist_ok=True)
    for shard in range(num_shards):
        with TarWriter(str(folder / f"{shard:05d}.tar")) as writer:
            for n in range(per_shard):
                key = f"{shard:05d}{n:04d}"
                caption = f"picture {key}"
                writer.write(
                    {
                        "__key__": key,
                        "jpg": jpeg(seed * 1000 + shard * per_shard + n),
                        "txt": caption,
                        "json": json.dumps({"key": key, "caption": caption, "status": "success"}),
                    }
                )
    return [str(folder / f"{shard:05d}.tar") for shard in range(num_shards)]


def epoch_keys(stream: TarShardStream, streams: int, epoch: int = 0) -> list[tuple]:
    keys = []
    for position, key, _ in stream.samples(streams, StreamWork(epoch)):
        if position.epoch != epoch:
            return keys
        keys.append(key)
    raise AssertionError("unreachable: streams are endless")


def test_shard_lists_expand_braces_and_name_what_is_missing(tmp_path):
    write_img2dataset_shards(tmp_path, 3, 1)
    assert list_shards(f"{tmp_path}/{{00000..00002}}.tar") == [str(tmp_path / f"0000{i}.tar") for i in range(3)]
    assert len(list_shards(f"{tmp_path}/00000.tar::{tmp_path}/{{00001..00002}}.tar")) == 3
    assert list_shards(str(tmp_path)) == list_shards(f"{tmp_path}/{{00000..00002}}.tar")  # a folder: its .tar files
    with pytest.raises(ShardError, match=r"2 of 5 shard\(s\) do not exist: .*00003.tar, .*00004.tar"):
        list_shards(f"{tmp_path}/{{00000..00004}}.tar")


@pytest.mark.parametrize(("world_size", "streams"), [(1, 1), (2, 2), (3, 1)])
def test_each_epoch_reads_every_sample_once_split_over_ranks_and_streams(tmp_path, world_size, streams):
    shards = write_img2dataset_shards(tmp_path, 7, 3)
    reading = ShardReading(shuffle_buffer=2)
    for epoch in (0, 1):
        seen = []
        for rank in range(world_size):
            rank_stream = TarShardStream(
                shards, 2, reading, seed=4, rank=rank, world_size=world_size, num_streams=streams
            )
            seen += [epoch_keys(rank_stream, s, epoch) for s in range(streams)]
        shard_sets = [{shard for _, shard, _ in keys} for keys in seen]
        assert all(a.isdisjoint(b) for i, a in enumerate(shard_sets) for b in shard_sets[i + 1 :])
        flat = sorted(key[1:] for keys in seen for key in keys)
        assert flat == [(shard, n) for shard in range(7) for n in range(3)]


def test_shard_order_and_sample_order_change_with_the_epoch_and_follow_the_seed(tmp_path):
    shards = write_img2dataset_shards(tmp_path, 4, 6)

    def names(seed: int, epoch: int) -> list[str]:
        stream = TarShardStream(shards, 1, ShardReading(shuffle_buffer=4), seed=seed)
        return [
            f"{sample['__url__']}:{sample['__key__']}"
            for _, _, sample in itertools.islice(stream.samples(0, StreamWork(epoch)), 24)
        ]

    assert names(0, 0) == names(0, 0)
    assert names(0, 0) != names(0, 1) and sorted(names(0, 0)) == sorted(names(0, 1))
    assert names(0, 0) != names(1, 0)


def test_the_shuffle_buffer_keeps_every_item_once_and_buffer_one_keeps_the_order():
    rng = np.random.default_rng(3)
    items = list(range(50))
    shuffled = list(buffered_shuffle(items, 8, np.random.default_rng(0)))
    assert sorted(shuffled) == items and shuffled != items
    assert list(buffered_shuffle(items, 1, rng)) == items


def test_a_stream_restarted_at_any_position_yields_exactly_what_came_next(tmp_path):
    shards = write_img2dataset_shards(tmp_path, 3, 5)
    stream = TarShardStream(shards, 3, ShardReading(num_frames=2, shuffle_buffer=3), seed=1, num_streams=1)
    whole = stream.batches(0, StreamWork())
    batches = [next(whole) for _ in range(12)]  # 15 samples an epoch: crosses two epoch ends
    for cut in np.random.default_rng(0).choice(11, size=4, replace=False):
        left = work_left(StreamWork(), StreamPosition(**batches[cut]["position"]), stream.own_share(0))
        restarted = stream.batches(0, left)
        for expected in batches[cut + 1 :]:
            got = next(restarted)
            assert got["keys"] == expected["keys"] and got["captions"] == expected["captions"]
            assert all(torch.equal(a, b) for a, b in zip(got["frames"], expected["frames"]))


def broken_shard(path: Path) -> None:
    """One shard holding every kind of sample a crawl leaves: good, damaged, captioned only in .json, uncaptioned,
    imageless, and a PNG saved as .jpg."""
    png = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(png, "PNG")
    with TarWriter(str(path)) as writer:
        writer.write({"__key__": "good", "jpg": jpeg(1), "txt": "a good one"})
        writer.write({"__key__": "damaged", "jpg": jpeg(2)[:200], "txt": "cut short"})
        writer.write({"__key__": "jsononly", "jpg": jpeg(3), "json": json.dumps({"caption": "from json"})})
        writer.write({"__key__": "nocaption", "jpg": jpeg(4), "json": json.dumps({"status": "success"})})
        writer.write({"__key__": "noimage", "txt": "no picture"})
        writer.write({"__key__": "pngasjpg", "jpg": png.getvalue(), "txt": "a png inside"})


@pytest.mark.parametrize("on_device", [False, True])
def test_broken_samples_are_skipped_and_listed_with_their_reason(tmp_path, on_device):
    broken_shard(tmp_path / "00000.tar")
    stream = TarShardStream(
        [str(tmp_path / "00000.tar")], 3, ShardReading(shuffle_buffer=1, decode_on_device=on_device)
    )
    loader = DataLoader(stream, batch_size=None, num_workers=0)
    batches = ShardBatches(
        loader, stream, FrameTransform(size=16, train=True), torch.device("cpu"), max_skip_fraction=0.9
    )
    iterator, captions = iter(batches), []
    while len(captions) < 3:  # decoded on the device, a damaged JPEG is found after its batch was made
        frames, more = next(iterator)
        assert frames.shape == (len(more), 1, 3, 16, 16)
        captions += more
    assert captions[:3] == ["a good one", "from json", "a png inside"]
    reasons = {entry["clip_id"].rsplit(":", 1)[-1]: entry["reason"] for entry in batches.skipped}
    assert set(reasons) == {"damaged", "nocaption", "noimage"}
    assert "not a readable" in reasons["damaged"] and "caption" in reasons["nocaption"]
    assert "no image" in reasons["noimage"]


def test_a_truncated_shard_keeps_what_came_before_the_break(tmp_path):
    shards = write_img2dataset_shards(tmp_path, 1, 4)
    data = Path(shards[0]).read_bytes()
    with tarfile.open(shards[0]) as tar:  # cut in the middle of the third sample's image
        third = [member for member in tar.getmembers() if member.name.endswith(".jpg")][2]
    Path(shards[0]).write_bytes(data[: third.offset_data + 100])
    stream = TarShardStream(shards, 1, ShardReading(shuffle_buffer=1))
    first = epoch_keys(stream, 0)
    assert [ordinal for _, _, ordinal in first] == [0, 1, 2]
    batches = stream.batches(0, StreamWork())
    assert [next(batches)["captions"] for _ in range(2)] == [["picture 000000000"], ["picture 000000001"]]
    after_break = next(batches)
    assert "breaks off" in after_break["skipped"][0]["reason"] and after_break["captions"] == ["picture 000000000"]


def test_a_batch_losing_too_many_samples_stops_the_run_naming_them(tmp_path):
    broken_shard(tmp_path / "00000.tar")
    stream = TarShardStream([str(tmp_path / "00000.tar")], 3, ShardReading(shuffle_buffer=1))
    batches = ShardBatches(
        DataLoader(stream, batch_size=None),
        stream,
        FrameTransform(size=16, train=True),
        torch.device("cpu"),
        max_skip_fraction=0.3,
    )
    with pytest.raises(TooManySkippedClips, match=r"(?s)3 of the 6 samples.*damaged.*not a readable"):
        next(iter(batches))


def shard_batches(
    shards: list[str], workers: int, decode_on_device: bool = False, rank: int = 0, world_size: int = 1
) -> ShardBatches:
    stream = TarShardStream(
        shards,
        2,
        ShardReading(num_frames=2, shuffle_buffer=3, decode_on_device=decode_on_device),
        seed=7,
        rank=rank,
        world_size=world_size,
        num_streams=max(1, workers),
    )
    loader = DataLoader(stream, batch_size=None, num_workers=workers)
    return ShardBatches(loader, stream, FrameTransform(size=16, train=True), torch.device("cpu"), seed=7)


def test_training_batches_resume_at_the_exact_sample_with_loader_workers(tmp_path):
    shards = write_img2dataset_shards(tmp_path, 4, 5)
    whole = shard_batches(shards, workers=2)
    iterator = iter(whole)
    consumed = [next(iterator) for _ in range(5)]
    state = json.loads(json.dumps(whole.state_dict()))  # what a checkpoint keeps
    following = [next(iterator) for _ in range(7)]  # crosses the epoch end of both streams
    iterator.close()
    assert len({caption for _, captions in consumed + following for caption in captions}) == 20

    resumed = shard_batches(shards, workers=2)
    resumed.load_state_dicts([state])
    again = iter(resumed)
    for frames, captions in following:
        got_frames, got_captions = next(again)
        assert got_captions == captions and torch.equal(got_frames, frames)
    again.close()


def write_uneven_shards(folder: Path, sizes: list[int]) -> list[str]:
    """Shards of `sizes` samples each, captioned with their own name and key: streams of equal batch rates drift
    apart in epochs over them."""
    folder.mkdir(parents=True, exist_ok=True)
    for shard, size in enumerate(sizes):
        with TarWriter(str(folder / f"{shard:05d}.tar")) as writer:
            for n in range(size):
                writer.write({"__key__": f"{shard:05d}{n:04d}", "jpg": jpeg(shard * 100 + n, (8, 8)), "txt": f"s{n}"})
    return [str(folder / f"{shard:05d}.tar") for shard in range(len(sizes))]


def handed_out_in_turn(ranks: list[ShardBatches], keys: list[tuple], rounds: int = 0, until_epoch: int = 0):
    """Take one batch from each rank in turn, as the ranks of a run do for a step, `rounds` times, or (rounds=0)
    until every rank has handed out a sample of `until_epoch`; returns the sample keys of each round, in order.
    `keys` is where the spy on `clip_generator` appends every sample handed out."""
    iterators = [iter(rank) for rank in ranks]
    taken: list[list[tuple]] = []
    reached = [False] * len(ranks)
    while len(taken) < rounds or (not rounds and not all(reached)):
        start = len(keys)
        for number, iterator in enumerate(iterators):
            before = len(keys)
            next(iterator)
            reached[number] |= any(epoch >= until_epoch for epoch, _, _ in keys[before:])
        taken.append(keys[start:])
    for iterator in iterators:
        iterator.close()
    return taken


@pytest.mark.parametrize("new_world_size", [1, 2, 3])
def test_shard_work_dealt_over_another_number_of_processes_hands_out_every_sample_once_per_epoch(
    tmp_path, monkeypatch, new_world_size
):
    """2 processes of one stream each stop after 8 batches, when one stream (its shards are smaller) has gone on
    into epoch 1 and the other is mid-shard in epoch 0, and continue on 1, 2 or 3: each of epochs 0 and 1 hands out
    every sample exactly once; on 2, the very samples, in the very order, the run would have handed out next."""
    from simvlg_video.train import batches as batches_module

    sizes = [3, 5, 4, 6, 3, 5, 4]
    shards = write_uneven_shards(tmp_path, sizes)
    keys: list[tuple] = []  # every sample handed out for training, as (epoch, shard, ordinal), in order
    generator = batches_module.clip_generator
    monkeypatch.setattr(batches_module, "clip_generator", lambda seed, *key: keys.append(key) or generator(seed, *key))

    old = [shard_batches(shards, 0, rank=rank, world_size=2) for rank in range(2)]
    before = handed_out_in_turn(old, keys, rounds=8)
    saved = json.loads(json.dumps([rank.state_dict() for rank in old]))  # what a checkpoint keeps
    works = [state["shards"]["work"][0] for state in saved]
    assert [work["epoch"] for work in works] == [0, 1]
    shard, handed = works[0]["queues"][0][0]
    assert 0 < handed < sizes[shard], "the stream in epoch 0 stopped mid-shard"

    new = [shard_batches(shards, 0, rank=rank, world_size=new_world_size) for rank in range(new_world_size)]
    for rank in new:
        rank.load_state_dicts(saved)
    after = handed_out_in_turn(new, keys, until_epoch=2)
    handed = [key for step in before + after for key in step]
    for epoch in (0, 1):
        samples = sorted((shard, ordinal) for e, shard, ordinal in handed if e == epoch)
        assert samples == [(shard, n) for shard, size in enumerate(sizes) for n in range(size)], f"epoch {epoch}"
    if new_world_size == 2:
        keys.clear()
        whole = handed_out_in_turn(
            [shard_batches(shards, 0, rank=r, world_size=2) for r in range(2)], keys, 8 + len(after)
        )
        assert whole == before + after


def test_a_saved_shard_position_that_does_not_fit_the_run_is_named(tmp_path):
    shards = write_img2dataset_shards(tmp_path, 3, 2)
    state = json.loads(json.dumps(shard_batches(shards, 0).state_dict()))
    state["shards"]["work"] = [{"epoch": 0, "queues": [[[7, 1]]]}]
    with pytest.raises(ValueError, match=r"names shard 7 \(1 samples handed out\) of a run of 3 shards"):
        shard_batches(shards, 0).load_state_dicts([state])
    twice = {"epoch": 0, "queues": [[[1, 0]]]}
    state["shards"]["work"] = [twice]
    with pytest.raises(ValueError, match="read shard 1 twice in epoch 0"):
        shard_batches(shards, 0, rank=0, world_size=2).load_state_dicts([state, state])


def test_jpegs_decoded_on_the_device_match_the_loaders_decode(tmp_path):
    shards = write_img2dataset_shards(tmp_path, 2, 4)
    in_loader, on_device = iter(shard_batches(shards, 0)), iter(shard_batches(shards, 0, decode_on_device=True))
    for _ in range(4):
        (frames, captions), (device_frames, device_captions) = next(in_loader), next(on_device)
        assert captions == device_captions
        torch.testing.assert_close(device_frames, frames, atol=0.05, rtol=0)  # within 2/255 of a pixel


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_batch_decode_turns_jpegs_upright_as_pillow_does(orientation):
    data = jpeg(5, (12, 20), orientation)
    (decoded,) = decode_jpegs([data], [orientation], "cpu")
    expected = image_from_bytes(data, "x")
    assert decoded.shape == expected.shape
    assert np.abs(decoded.numpy().astype(int) - expected).max() <= 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_jpegs_decode_on_the_gpu_like_on_the_cpu():
    encoded = [jpeg(seed, (48 + seed, 64)) for seed in range(6)] + [jpeg(9)[:300]]
    on_gpu = decode_jpegs(encoded, [1] * 7, "cuda")
    on_cpu = decode_jpegs(encoded, [1] * 7, "cpu")
    assert isinstance(on_gpu[-1], str)
    for gpu, cpu in zip(on_gpu[:-1], on_cpu[:-1]):
        assert gpu.is_cuda and (gpu.cpu().int() - cpu.int()).abs().float().mean() < 1.0


def test_write_shards_packs_a_manifests_images_for_data_shards(tmp_path, capsys):
    from simvlg_video.data_tools.make_stills import make_stills_dataset

    manifest = make_stills_dataset(tmp_path / "stills", num_images=24, size=32, show_progress=False)
    write_shards_command([str(manifest), str(tmp_path / "shards"), "--per-shard", "10"])
    folder = capsys.readouterr().out.strip().rsplit("data.shards=", 1)[1]
    shards = list_shards(folder)
    assert shards == list_shards(f"{folder}/{{00000..{len(shards) - 1:05d}}}.tar")
    train_lines = [json.loads(line) for line in manifest.read_text().splitlines() if '"train"' in line]
    pairs = sum(len(line["captions"]) for line in train_lines)
    assert len(shards) == (pairs + 9) // 10 and not list((tmp_path / "shards").glob("*.partial"))
    stream = TarShardStream(shards, 1, ShardReading(shuffle_buffer=1))
    keys = epoch_keys(stream, 0)
    assert len(keys) == pairs
    with pytest.raises(InputError, match="unknown split 'nope'"):
        write_shards_command([str(manifest), str(tmp_path / "other"), "--split", "nope"])
