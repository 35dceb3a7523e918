"""MSR-VTT conversion: official videodatainfo files and LAVIS caption files, to the exact manifest rows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from simvlg_video.data.manifest import read_manifest
from simvlg_video.data_tools.conversion import ConversionError
from simvlg_video.data_tools.convert import main as convert

UNICODE = "un café crème – 日本語のキャプション 🎬"


def write_json(path: Path, value: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
    return path


def sentence(video_id: str, caption: str, sen_id: int) -> dict:
    return {"caption": caption, "video_id": video_id, "sen_id": sen_id}


@pytest.fixture
def official(tmp_path: Path) -> Path:
    """A root with the two official files (as the release lays them out) and videos where the release puts them."""
    root = tmp_path / "msrvtt"
    videos = [
        {
            "category": 9,
            "url": "https://www.youtube.com/watch?v=x",
            "video_id": f"video{i}",
            "start time": 1.5,
            "end time": 11.5,
            "split": split,
            "id": i,
        }
        for i, split in enumerate(["train", "train", "validate", "train"])
    ]
    sentences = [
        sentence("video0", "a man is talking", 0),
        sentence("video0", "  a man speaks  ", 1),
        sentence("video1", UNICODE, 2),
        sentence("video1", "   ", 3),
        sentence("video2", "cars race", 4),
        sentence("video3", "", 5),
    ]
    write_json(root / "annotation/train_val_videodatainfo.json", {"info": {}, "videos": videos, "sentences": sentences})
    test_videos = [{"video_id": "video4", "split": "test", "id": 4}, {"video_id": "video5", "split": "test", "id": 5}]
    test_sentences = [
        sentence("video4", "a cat sleeps", 6),
        sentence("video5", "a dog barks", 7),
        sentence("video5", "a dog is barking", 8),
    ]
    write_json(root / "annotation/test_videodatainfo.json", {"videos": test_videos, "sentences": test_sentences})
    for name in (
        "TrainValVideo/video0.mp4",
        "TrainValVideo/video1.mp4",
        "TrainValVideo/video3.mp4",
        "TestVideo/video4.webm",
    ):  # video2 and video5 are missing
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"not decoded by the converter")
    return root


def run_official(root: Path, *extra: str):
    return convert(
        [
            "msrvtt",
            "--root",
            str(root),
            "--official",
            str(root / "annotation/train_val_videodatainfo.json"),
            str(root / "annotation/test_videodatainfo.json"),
            *extra,
        ]
    )


def test_official_files_become_exact_rows(official: Path):
    summary = run_official(official)
    records = read_manifest(official / "manifest.jsonl")
    assert [(r.clip_id, r.split, r.video, r.captions) for r in records] == [
        ("video0", "train", "TrainValVideo/video0.mp4", ("a man is talking", "a man speaks")),
        ("video1", "train", "TrainValVideo/video1.mp4", (UNICODE,)),
        ("video2", "val", "video2.mp4", ("cars race",)),  # missing: where the convention would put it
        ("video4", "test", "TestVideo/video4.webm", ("a cat sleeps",)),
        ("video5", "test", "video5.mp4", ("a dog barks", "a dog is barking")),
    ]
    assert all(r.start is None and r.end is None and not r.attributes for r in records)
    assert summary.clips_per_split == {"train": 2, "val": 1, "test": 2}
    assert summary.captions_per_clip == {"train": (1, 1.5, 2), "val": (1, 1.0, 1), "test": (1, 1.5, 2)}
    assert summary.videos_not_found == ["video2", "video5"]
    assert summary.counts == {"captions dropped (empty)": 2, "clips dropped (no non-empty caption)": 1}


def test_unicode_is_written_as_utf8_text(official: Path):
    run_official(official)
    assert UNICODE in (official / "manifest.jsonl").read_text(encoding="utf-8")


def test_summary_is_printed(official: Path, capsys: pytest.CaptureFixture):
    run_official(official)
    printed = capsys.readouterr().out
    assert "train: 2 clips, captions per clip min 1 / mean 1.50 / max 2" in printed
    assert "videos not found: 2 (video2, video5)" in printed


def test_out_and_videos_options(official: Path, tmp_path: Path):
    out = tmp_path / "elsewhere/m.jsonl"
    run_official(official, "--videos", str(official / "TestVideo"), "--out", str(out))
    rows = {r.clip_id: r for r in read_manifest(out)}
    assert rows["video4"].video == str(official / "TestVideo/video4.webm")  # not under the manifest: absolute
    assert rows["video4"].video_path.is_file() and not rows["video0"].video_path.exists()


def test_duplicate_video_id_is_an_error(official: Path):
    path = official / "annotation/test_videodatainfo.json"
    document = json.loads(path.read_text())
    document["videos"].append({"video_id": "video0", "split": "test"})
    write_json(path, document)
    with pytest.raises(
        ConversionError, match=r"test_videodatainfo.json: videos\[2\].video_id: duplicate clip id 'video0'"
    ):
        run_official(official)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("sentences"), r"missing key 'sentences'"),
        (lambda d: d["sentences"][1].pop("caption"), r"sentences\[1\]: missing key 'caption'"),
        (lambda d: d["sentences"][0].update(caption=7), r"sentences\[0\].caption: expected str, got 7"),
        (lambda d: d["videos"][1].update(split="dev"), r"videos\[1\].split: expected one of .*got 'dev'"),
        (lambda d: d["sentences"][2].update(video_id="video99"), r"sentences\[2\].video_id: 'video99' is not in"),
    ],
)
def test_schema_errors_name_file_and_key(official: Path, change, message: str):
    path = official / "annotation/train_val_videodatainfo.json"
    document = json.loads(path.read_text())
    change(document)
    write_json(path, document)
    with pytest.raises(ConversionError, match=rf"^{re.escape(str(path))}: .*{message}"):
        run_official(official)


def test_invalid_json_names_file_and_line(official: Path):
    path = official / "annotation/test_videodatainfo.json"
    path.write_text('{"videos": [],\n "sentences": [,]}')
    with pytest.raises(ConversionError, match=rf"{re.escape(str(path))}: not valid JSON .* at line 2"):
        run_official(official)


def test_two_files_for_one_video_is_an_error(official: Path):
    (official / "TrainValVideo/video0.mkv").write_bytes(b"x")
    with pytest.raises(ConversionError, match=r"video 'video0' matches several files .*video0.mkv.*video0.mp4"):
        run_official(official)


@pytest.fixture
def lavis(tmp_path: Path) -> Path:
    root = tmp_path / "lavis"
    write_json(
        root / "cap_train.json",
        [
            {"video": "video0.mp4", "caption": "a man is talking", "instance_id": 0},
            {"video": "video1.mp4", "caption": UNICODE},
            {"video": "video0.mp4", "caption": "a man speaks "},
        ],
    )
    write_json(root / "cap_test.json", [{"video": "video4.mp4", "caption": ["a cat sleeps", " ", "a cat naps"]}])
    (root / "all").mkdir()
    for name in ("video0", "video1", "video4"):
        (root / "all" / f"{name}.mp4").write_bytes(b"x")
    return root


def run_lavis(root: Path):
    return convert(
        ["msrvtt", "--root", str(root), "--lavis", f"train={root / 'cap_train.json'}", f"test={root / 'cap_test.json'}"]
    )


def test_lavis_files_merge_captions_per_video(lavis: Path):
    summary = run_lavis(lavis)
    records = read_manifest(lavis / "manifest.jsonl")
    assert [(r.clip_id, r.split, r.video, r.captions) for r in records] == [
        ("video0", "train", "all/video0.mp4", ("a man is talking", "a man speaks")),
        ("video1", "train", "all/video1.mp4", (UNICODE,)),
        ("video4", "test", "all/video4.mp4", ("a cat sleeps", "a cat naps")),
    ]
    assert summary.counts == {"captions dropped (empty)": 1}
    assert summary.videos_not_found == []


def test_lavis_video_in_two_splits_is_a_duplicate(lavis: Path):
    write_json(lavis / "cap_test.json", [{"video": "video1.mp4", "caption": ["a caption"]}])
    with pytest.raises(
        ConversionError, match=r"cap_test.json: \[0\].video: duplicate clip id 'video1' \(also in .*cap_tr"
    ):
        run_lavis(lavis)


def test_lavis_caption_list_repeated_is_a_duplicate(lavis: Path):
    write_json(
        lavis / "cap_test.json", [{"video": "video4.mp4", "caption": ["a"]}, {"video": "video4.mp4", "caption": "b"}]
    )
    with pytest.raises(ConversionError, match=r"cap_test.json: \[1\].video: duplicate clip id 'video4'"):
        run_lavis(lavis)


def test_lavis_wrong_caption_type_names_the_entry(lavis: Path):
    write_json(lavis / "cap_test.json", [{"video": "video4.mp4", "caption": ["a", 3]}])
    with pytest.raises(ConversionError, match=r"cap_test.json: \[0\].caption: expected a string or a list of strings"):
        run_lavis(lavis)


def test_lavis_split_option_is_checked(lavis: Path):
    with pytest.raises(ConversionError, match=r"--lavis 'dev=x.json': expected SPLIT=FILE"):
        convert(["msrvtt", "--root", str(lavis), "--lavis", "dev=x.json"])
