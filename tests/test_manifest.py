"""Manifest reading and writing: a round trip keeps everything, and each kind of bad line is reported with the
file, the line number and the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simvlg_video.data.manifest import ClipRecord, ManifestError, read_manifest, write_manifest


def line(**overrides) -> dict:
    base = {
        "clip_id": "c1",
        "video": "videos/c1.mp4",
        "start": None,
        "end": None,
        "captions": ["a red circle moves left"],
        "split": "train",
    }
    base.update(overrides)
    return {key: value for key, value in base.items() if value != "DROP"}


def write_lines(path: Path, rows: list) -> Path:
    path.write_text(
        "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows), encoding="utf-8"
    )
    return path


def test_read_resolves_paths_and_keeps_all_fields(tmp_path: Path) -> None:
    rows = [
        line(),
        line(
            clip_id="c2",
            video="/data/abs.mp4",
            start=1.5,
            end=4,
            split="val",
            num_frames=90,
            fps=29.97,
            duration=3.0,
            width=320,
            height=240,
            attributes={"source": "msrvtt", "tags": [1, 2]},
        ),
    ]
    records = read_manifest(write_lines(tmp_path / "m.jsonl", rows))
    first, second = records
    assert first.video_path == tmp_path / "videos" / "c1.mp4"
    assert first.captions == ("a red circle moves left",)
    assert first.num_frames is None and first.attributes == {}
    assert second.video_path == Path("/data/abs.mp4")
    assert (second.start, second.end, second.fps, second.num_frames) == (1.5, 4.0, 29.97, 90)
    assert second.attributes == {"source": "msrvtt", "tags": [1, 2]}


def test_split_filter_keeps_file_order(tmp_path: Path) -> None:
    rows = [line(clip_id=f"c{i}", split=split) for i, split in enumerate(["train", "test", "train", "val"])]
    path = write_lines(tmp_path / "m.jsonl", rows)
    assert [r.clip_id for r in read_manifest(path, split="train")] == ["c0", "c2"]
    assert [r.clip_id for r in read_manifest(path)] == ["c0", "c1", "c2", "c3"]
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        read_manifest(path, split="dev")


def test_blank_lines_are_ignored_but_line_numbers_stay_true(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "m.jsonl", [line(), "", "   ", line(clip_id="c2", split="nope")])
    with pytest.raises(ManifestError, match=r"m\.jsonl:4: key 'split'"):
        read_manifest(path)


def test_round_trip_keeps_utf8_captions_and_metadata(tmp_path: Path) -> None:
    captions = ["Ein Hund läuft über die Straße", "一只狗在跑", 'emoji 🐕 and "quotes"']
    rows = [line(captions=captions, start=0.5, end=2.0, fps=25.0, num_frames=50, attributes={"k": "v"})]
    path = write_lines(tmp_path / "m.jsonl", rows)
    records = read_manifest(path)
    out = tmp_path / "copy.jsonl"
    write_manifest(out, records)
    assert read_manifest(out) == records
    assert "läuft" in out.read_text(encoding="utf-8")  # stored as text, not \u escapes
    assert records[0].captions == tuple(captions)


def test_write_accepts_dicts_and_checks_them(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "m.jsonl"
    write_manifest(out, [line(), line(clip_id="c2")])
    assert [r.clip_id for r in read_manifest(out)] == ["c1", "c2"]
    with pytest.raises(ManifestError, match="record 1: key 'captions'"):
        write_manifest(out, [line(clip_id="c3"), line(clip_id="c4", captions=[])])
    with pytest.raises(ManifestError, match="record 1: key 'clip_id': duplicate 'c1'"):
        write_manifest(out, [line(), line()])
    # a failed write leaves the old file whole and no temp files behind
    assert [r.clip_id for r in read_manifest(out)] == ["c1", "c2"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.jsonl"]


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ("{not json", r":2: not valid JSON"),
        ("[1, 2]", r":2: expected a JSON object, got list"),
        (line(captions="DROP"), r":2: missing key 'captions'"),
        (line(start="DROP"), r":2: missing key 'start'"),
        (line(caption=["typo"]), r":2: unknown key 'caption'"),
        (line(clip_id=""), r":2: key 'clip_id': expected a non-empty string"),
        (line(clip_id=7), r":2: key 'clip_id': expected a non-empty string, got 7"),
        (line(video=None), r":2: key 'video'"),
        (line(split="training"), r":2: key 'split': expected one of \['train', 'val', 'test'\], got 'training'"),
        (line(captions=[]), r":2: key 'captions': expected a non-empty list of strings, got \[\]"),
        (line(captions="one string"), r":2: key 'captions': expected a non-empty list"),
        (line(captions=["ok", 3]), r":2: key 'captions': expected only non-empty strings"),
        (line(captions=["ok", "  "]), r":2: key 'captions': expected only non-empty strings"),
        (line(start="1.0"), r":2: key 'start': expected a number >= 0.0 or null, got '1.0'"),
        (line(start=-1), r":2: key 'start'"),
        (line(start=3, end=2), r":2: key 'end': expected a time after start=3.0, got 2"),
        (line(fps=0), r":2: key 'fps': expected a number > 0.0 or null"),
        (line(num_frames=2.5), r":2: key 'num_frames': expected an integer >= 1 or null"),
        (line(num_frames=True), r":2: key 'num_frames'"),
        (line(width=0), r":2: key 'width'"),
        (line(attributes=["x"]), r":2: key 'attributes': expected a JSON object"),
        (line(clip_id="c0"), r":2: key 'clip_id': duplicate 'c0' \(first seen on line 1\)"),
    ],
)
def test_bad_lines_name_file_line_and_key(tmp_path: Path, row, expected: str) -> None:
    path = write_lines(tmp_path / "bad.jsonl", [line(clip_id="c0"), row])
    with pytest.raises(ManifestError, match=r"bad\.jsonl" + expected):
        read_manifest(path)


def test_missing_manifest_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"nowhere\.jsonl: manifest file not found"):
        read_manifest(tmp_path / "nowhere.jsonl")


def test_records_are_immutable_and_hashable(tmp_path: Path) -> None:
    record = read_manifest(write_lines(tmp_path / "m.jsonl", [line(attributes={"a": 1})]))[0]
    assert isinstance(record, ClipRecord)
    with pytest.raises(AttributeError):
        record.clip_id = "other"  # type: ignore[misc]
    assert hash(record) == hash(read_manifest(tmp_path / "m.jsonl")[0])
