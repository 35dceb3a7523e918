"""ActivityNet Captions conversion: one row per event segment, clipped or dropped segments, two reference sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simvlg_video.data.manifest import read_manifest
from simvlg_video.data_tools.conversion import ConversionError
from simvlg_video.data_tools.convert import main as convert

UNICODE = "  Un homme joue du piano – 日本語.  "


def video(duration: float, timestamps: list, sentences: list) -> dict:
    return {"duration": duration, "timestamps": timestamps, "sentences": sentences}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "anet"
    files = {
        "train.json": {
            "v_trainAAAAAA": video(
                10.0,
                [[0, 4.5], [3.0, 12.5], [7, 5], [-1.0, 2.0]],
                ["A man walks in.", UNICODE, "Inverted segment.", "Starts before zero."],
            ),
            "v_trainBBBBBB": video(8.5, [[8.5, 9.0], [1, 1], [2, 6]], ["Past the end.", "Empty.", "   "]),
        },
        "val_1.json": {"v_valCCCCCCCC": video(20.0, [[10, 20], [0, 9.5]], ["She sits down.", "She walks in."])},
        "val_2.json": {"v_valCCCCCCCC": video(20.0, [[0.5, 19.0]], ["A woman enters and sits."])},
    }
    for name, document in files.items():
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / name).write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    (root / "videos").mkdir()
    (root / "videos/v_trainAAAAAA.mp4").write_bytes(b"x")
    (root / "videos/valCCCCCCCC.mkv").write_bytes(b"x")  # a download without the v_ prefix
    return root


def run(root: Path, *names: str, extra: tuple[str, ...] = ()):
    options = {"train": "--train", "val_1": "--val-1", "val_2": "--val-2"}
    args = [arg for name in names for arg in (options[name], str(root / "annotations" / f"{name}.json"))]
    return convert(["activitynet", "--root", str(root), *args, *extra])


def test_one_row_per_segment_clipped_to_the_duration(root: Path):
    summary = run(root, "train", "val_1", "val_2")
    records = read_manifest(root / "manifest.jsonl")
    assert [(r.clip_id, r.split, r.video, r.start, r.end, r.captions) for r in records] == [
        ("v_trainAAAAAA:train:0", "train", "videos/v_trainAAAAAA.mp4", 0.0, 4.5, ("A man walks in.",)),
        ("v_trainAAAAAA:train:1", "train", "videos/v_trainAAAAAA.mp4", 3.0, 10.0, (UNICODE.strip(),)),
        ("v_trainAAAAAA:train:3", "train", "videos/v_trainAAAAAA.mp4", 0.0, 2.0, ("Starts before zero.",)),
        ("v_valCCCCCCCC:val_1:0", "val", "videos/valCCCCCCCC.mkv", 10.0, 20.0, ("She sits down.",)),
        ("v_valCCCCCCCC:val_1:1", "val", "videos/valCCCCCCCC.mkv", 0.0, 9.5, ("She walks in.",)),
        ("v_valCCCCCCCC:val_2:0", "val", "videos/valCCCCCCCC.mkv", 0.5, 19.0, ("A woman enters and sits.",)),
    ]
    assert [r.attributes for r in records[2:4]] == [
        {"video_id": "v_trainAAAAAA", "reference_set": "train"},
        {"video_id": "v_valCCCCCCCC", "reference_set": "val_1"},
    ]
    assert summary.counts == {
        "segments clipped to the duration": 2,
        "segments dropped (end before start)": 1,
        "segments dropped (empty within the duration)": 2,
        "segments dropped (empty caption)": 1,
    }
    assert summary.clips_per_split == {"train": 3, "val": 3}
    assert summary.videos_not_found == []  # v_trainBBBBBB kept no segment


def test_missing_video_is_counted_once(root: Path):
    (root / "videos/valCCCCCCCC.mkv").unlink()
    summary = run(root, "val_1", "val_2")
    assert summary.videos_not_found == ["v_valCCCCCCCC"]
    # where the convention puts it: under --videos, which defaults to ROOT
    assert {r.video for r in read_manifest(root / "manifest.jsonl")} == {"v_valCCCCCCCC.mp4"}


def test_val_split_option(root: Path):
    run(root, "val_1", extra=("--val-split", "test"))
    assert {r.split for r in read_manifest(root / "manifest.jsonl")} == {"test"}


def test_video_with_and_without_prefix_is_ambiguous(root: Path):
    (root / "videos/v_valCCCCCCCC.webm").write_bytes(b"x")
    with pytest.raises(ConversionError, match=r"video 'v_valCCCCCCCC' matches several files"):
        run(root, "val_1")


def test_duplicate_video_id_in_a_file_is_an_error(root: Path):
    path = root / "annotations/val_2.json"
    entry = '{"duration": 5, "timestamps": [[0, 1]], "sentences": ["a"]}'
    path.write_text(f'{{"v_x": {entry},\n "v_x": {entry}}}')
    with pytest.raises(ConversionError, match=r"val_2.json: duplicate key 'v_x'"):
        run(root, "val_2")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (video(5, [[0, 1], [1, 2]], ["one sentence"]), r"\['v_bad'\]: 2 timestamps but 1 sentences"),
        (video(5, [[0, 1], [1]], ["a", "b"]), r"\['v_bad'\].timestamps\[1\]: expected \[start, end\] in seconds"),
        (video(5, [[0, "1"]], ["a"]), r"\['v_bad'\].timestamps\[0\]: expected \[start, end\]"),
        (video(5, [[0, 1]], [None]), r"\['v_bad'\].sentences\[0\]: expected a string"),
        (video(-2, [[0, 1]], ["a"]), r"\['v_bad'\].duration: expected a positive number"),
        ({"timestamps": [], "sentences": []}, r"\['v_bad'\]: missing key 'duration'"),
        ([1, 2], r"\['v_bad'\]: expected a JSON object"),
    ],
)
def test_schema_errors_name_the_video_and_key(root: Path, entry: object, message: str):
    (root / "annotations/train.json").write_text(json.dumps({"v_ok": video(5, [[0, 1]], ["a"]), "v_bad": entry}))
    with pytest.raises(ConversionError, match=rf"train.json: {message}"):
        run(root, "train")


def test_not_an_object_keyed_by_video(root: Path):
    (root / "annotations/train.json").write_text("[]")
    with pytest.raises(ConversionError, match=r"train.json: expected a JSON object keyed by video id"):
        run(root, "train")


def test_at_least_one_file(root: Path):
    with pytest.raises(ConversionError, match=r"give at least one of --train, --val-1, --val-2"):
        run(root)
