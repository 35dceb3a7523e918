"""check_videos: real encoded files, missing / empty / garbage / corrupt ones, clip windows, the filtered manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from simvlg_video.data import sampling
from simvlg_video.data.dataset import VideoClipDataset
from simvlg_video.data.manifest import ManifestError, read_manifest, write_manifest
from simvlg_video.data.video_writer import write_video
from simvlg_video.data_tools.check_videos import CheckError
from simvlg_video.data_tools.check_videos import main as check

FPS = 8


def frames(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 48, 64, 3), dtype=np.uint8)


def write_corrupt_tail(path: Path) -> None:
    """An MP4 whose index (moov, written first) is intact but whose last half of frame data is zeros: it probes
    fine and fails only when decoded."""
    write_video(path, frames(24, seed=9), FPS, container_format="mp4", container_options={"movflags": "+faststart"})
    data = bytearray(path.read_bytes())
    data[len(data) // 2 :] = bytes(len(data) - len(data) // 2)
    path.write_bytes(bytes(data))


def row(clip_id: str, video: str, split: str, start: float | None = None, end: float | None = None) -> dict:
    return {
        "clip_id": clip_id,
        "video": video,
        "start": start,
        "end": end,
        "captions": [f"caption of {clip_id}"],
        "split": split,
    }


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("check")
    videos = root / "videos"
    videos.mkdir()
    write_video(videos / "good.mp4", frames(24, seed=1), FPS)  # 3.0 s
    write_video(videos / "good.avi", frames(16, seed=2), FPS)
    (videos / "empty.mp4").write_bytes(b"")
    (videos / "garbage.mp4").write_bytes(np.random.default_rng(3).bytes(4096))
    write_corrupt_tail(videos / "tail.mp4")
    write_manifest(
        root / "manifest.jsonl",
        [
            row("whole", "videos/good.mp4", "train"),
            row("segment", "videos/good.mp4", "val", 0.5, 1.5),
            row("last_frame", "videos/good.mp4", "val", 2.8, 4.0),  # frame 23 (shown from 2.875 s) is inside
            row("after_end", "videos/good.mp4", "val", 2.9, 5.0),  # starts after the last frame is shown
            row("avi", "videos/good.avi", "test"),
            row("missing", "videos/nothing.mp4", "train"),
            row("empty", "videos/empty.mp4", "test"),
            row("garbage", "videos/garbage.mp4", "test"),
            row("tail", "videos/tail.mp4", "train"),
        ],
    )
    return root


def run(root: Path, *args: str) -> tuple[dict, list[str]]:
    report = check([str(root / "manifest.jsonl"), "--quiet", *args])
    out = root / "manifest.checked.jsonl"
    return report, [record.clip_id for record in read_manifest(out)]


def test_probe_filters_missing_unreadable_and_empty_windows(dataset_root: Path):
    report, kept = run(dataset_root, "--workers", "0")
    assert kept == ["whole", "segment", "last_frame", "avi", "tail"]
    assert (report["clips"], report["kept_clips"], report["videos"]) == (9, 5, 6)
    assert [(p["video"], p["clip_ids"]) for p in report["missing"]] == [
        (str(dataset_root / "videos/nothing.mp4"), ["missing"])
    ]
    assert {Path(p["video"]).name: p["clip_ids"] for p in report["unreadable"]} == {
        "empty.mp4": ["empty"],
        "garbage.mp4": ["garbage"],
    }
    assert "empty (0 bytes)" in next(p["reason"] for p in report["unreadable"] if p["clip_ids"] == ["empty"])
    assert [w["clip_id"] for w in report["empty_window_clips"]] == ["after_end"]
    assert report["per_split"] == {
        "train": {"clips": 3, "kept": 2},
        "val": {"clips": 3, "kept": 2},
        "test": {"clips": 3, "kept": 1},
    }
    saved = json.loads((dataset_root / "manifest.check_report.json").read_text())
    assert saved["kept_clips"] == 5 and saved["checked_manifest"] == str(dataset_root / "manifest.checked.jsonl")


def test_kept_rows_carry_probed_metadata(dataset_root: Path):
    run(dataset_root, "--workers", "0")
    records = {r.clip_id: r for r in read_manifest(dataset_root / "manifest.checked.jsonl")}
    assert (records["whole"].num_frames, records["whole"].fps, records["whole"].duration) == (24, 8.0, 3.0)
    assert records["avi"].num_frames == 16
    assert (records["segment"].start, records["segment"].end, records["segment"].captions) == (
        0.5,
        1.5,
        ("caption of segment",),
    )


def test_every_kept_clip_loads(dataset_root: Path):
    """What the check keeps, the training dataset can sample, down to a window holding only the last frame."""
    run(dataset_root, "--workers", "0")
    records = [r for r in read_manifest(dataset_root / "manifest.checked.jsonl") if r.clip_id != "tail"]
    items = VideoClipDataset(records, num_frames=2, sampler=sampling.head, train=False)
    loaded = {item["clip_id"]: item for item in items}
    assert all("error" not in item for item in loaded.values())
    assert loaded["last_frame"]["frame_indices"] == [23, 23]


def test_decode_catches_files_that_only_fail_when_decoded(dataset_root: Path):
    report, kept = run(dataset_root, "--workers", "0", "--decode")
    assert kept == ["whole", "segment", "last_frame", "avi"]
    assert "tail.mp4" in {Path(p["video"]).name for p in report["unreadable"]}


def test_process_pool_gives_the_same_report(dataset_root: Path):
    in_process, _ = run(dataset_root, "--workers", "0")
    pooled, _ = run(dataset_root, "--workers", "2")
    assert pooled == in_process


def test_out_in_another_folder_keeps_paths_valid(dataset_root: Path, tmp_path: Path):
    out = tmp_path / "sub/checked.jsonl"
    check(
        [
            str(dataset_root / "manifest.jsonl"),
            "--quiet",
            "--workers",
            "0",
            "--out",
            str(out),
            "--report",
            str(tmp_path / "report.json"),
        ]
    )
    records = read_manifest(out)
    assert not Path(records[0].video).is_absolute()  # still relative, now to the new manifest's folder
    assert records[0].video_path == dataset_root / "videos/good.mp4"
    assert all(r.video_path.is_file() for r in records)


def test_refuses_to_overwrite_its_input(dataset_root: Path):
    with pytest.raises(CheckError, match="would overwrite the manifest being checked"):
        check([str(dataset_root / "manifest.jsonl"), "--out", str(dataset_root / "manifest.jsonl")])


def test_nothing_readable_is_an_error(tmp_path: Path):
    write_manifest(tmp_path / "manifest.jsonl", [row("gone", "gone.mp4", "train")])
    with pytest.raises(CheckError, match="no readable clip"):
        check([str(tmp_path / "manifest.jsonl"), "--quiet", "--workers", "0"])
    assert not (tmp_path / "manifest.checked.jsonl").exists()
    assert json.loads((tmp_path / "manifest.check_report.json").read_text())["missing_videos"] == 1


def test_malformed_manifest_is_one_line(tmp_path: Path):
    (tmp_path / "manifest.jsonl").write_text('{"clip_id": "x"}\n')
    with pytest.raises(ManifestError, match=r"manifest.jsonl:1: missing key 'video'"):
        check([str(tmp_path / "manifest.jsonl"), "--quiet"])
