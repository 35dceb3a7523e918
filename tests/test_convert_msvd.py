"""MSVD conversion: description text file or multilingual CSV, the usual split by clip order, LAVIS files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from simvlg_video.data.manifest import read_manifest
from simvlg_video.data_tools.conversion import ConversionError
from simvlg_video.data_tools.convert import main as convert

UNICODE = "un hombre está cocinando – 日本語 🍳"
DESCRIPTIONS = f"""# Microsoft Research Video Description Corpus
# Format: <VideoID>_<start>_<end> <description>
-4wsuPCjDBc_5_15 a squirrel is eating a peanut in it's shell
-4wsuPCjDBc_5_15\ta squirrel is eating
_UqnTFs1BLc_23_27 {UNICODE}
_UqnTFs1BLc_23_27
ab_cd-ef_12_0_5 a man plays a guitar
ab_cd-ef_12_0_5    someone is playing guitar

zzzzzzzzzzz_1_2 a clip nobody lists
"""
# vid numbers out of file order; vid2's clip has no description
MAPPING = """ab_cd-ef_12_0_5 vid3
-4wsuPCjDBc_5_15 vid1
noCaptions_0_1 vid2
_UqnTFs1BLc_23_27 vid4
extra_3_4 vid5
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "msvd"
    (root / "YouTubeClips").mkdir(parents=True)
    for name in ("-4wsuPCjDBc_5_15", "ab_cd-ef_12_0_5", "_UqnTFs1BLc_23_27"):
        (root / "YouTubeClips" / f"{name}.avi").write_bytes(b"x")
    (root / "AllVideoDescriptions.txt").write_text(DESCRIPTIONS, encoding="utf-8")
    (root / "youtube_mapping.txt").write_text(MAPPING)
    return root


def run(root: Path, *args: str):
    return convert(["msvd", "--root", str(root), *args])


def rows(root: Path) -> list[tuple]:
    return [(r.clip_id, r.split, r.video, r.captions) for r in read_manifest(root / "manifest.jsonl")]


def test_descriptions_and_mapping_give_the_usual_split(root: Path):
    summary = run(
        root,
        "--descriptions",
        str(root / "AllVideoDescriptions.txt"),
        "--mapping",
        str(root / "youtube_mapping.txt"),
        "--split-sizes",
        "2",
        "1",
        "2",
    )
    assert rows(root) == [
        (
            "-4wsuPCjDBc_5_15",
            "train",
            "YouTubeClips/-4wsuPCjDBc_5_15.avi",
            ("a squirrel is eating a peanut in it's shell", "a squirrel is eating"),
        ),
        # vid2 (no description) is dropped but keeps its place: vid3 is still the val clip
        (
            "ab_cd-ef_12_0_5",
            "val",
            "YouTubeClips/ab_cd-ef_12_0_5.avi",
            ("a man plays a guitar", "someone is playing guitar"),
        ),
        ("_UqnTFs1BLc_23_27", "test", "YouTubeClips/_UqnTFs1BLc_23_27.avi", (UNICODE,)),
    ]
    assert summary.clips_per_split == {"train": 1, "val": 1, "test": 1}
    assert summary.counts == {
        "captions dropped (empty)": 1,
        "described clips dropped (not in youtube_mapping.txt)": 1,
        "clips dropped (no non-empty caption)": 2,
    }
    assert summary.videos_not_found == []


def test_usual_split_sizes_are_the_default(root: Path):
    with pytest.raises(
        ConversionError,
        match=r"youtube_mapping.txt: lists 5 clips, but split sizes \[1200, 100, 670\] "
        r"need 1970",
    ):
        run(
            root,
            "--descriptions",
            str(root / "AllVideoDescriptions.txt"),
            "--mapping",
            str(root / "youtube_mapping.txt"),
        )


def test_clip_list_gives_the_order(root: Path):
    clip_list = root / "clips.txt"
    clip_list.write_text("_UqnTFs1BLc_23_27.avi\n-4wsuPCjDBc_5_15\nmissing_1_2\n")
    summary = run(
        root,
        "--descriptions",
        str(root / "AllVideoDescriptions.txt"),
        "--clip-list",
        str(clip_list),
        "--split-sizes",
        "1",
        "0",
        "2",
    )
    assert [(clip, split) for clip, split, _, _ in rows(root)] == [
        ("_UqnTFs1BLc_23_27", "train"),
        ("-4wsuPCjDBc_5_15", "test"),
    ]
    assert summary.counts["described clips dropped (not in clips.txt)"] == 2


def test_multilingual_csv_keeps_english_rows(root: Path):
    csv_file = root / "MSR Video Description Corpus.csv"
    csv_file.write_text(
        "\ufeffVideoID,Start,End,WorkerID,Source,AnnotationTime,Language,Description\n"
        '-4wsuPCjDBc,5,15,1,clean,10,English,"a squirrel eats, slowly"\n'
        "-4wsuPCjDBc,5,15,2,clean,10,German,ein Eichhörnchen frisst\n"
        f"_UqnTFs1BLc,23,27,3,unverified,10,English,{UNICODE}\n"
        "_UqnTFs1BLc,23,27,3,unverified,10,English,\n",
        encoding="utf-8",
    )
    summary = run(
        root,
        "--descriptions",
        str(csv_file),
        "--mapping",
        str(root / "youtube_mapping.txt"),
        "--split-sizes",
        "3",
        "1",
        "1",
    )
    assert [(clip, split, captions) for clip, split, _, captions in rows(root)] == [
        ("-4wsuPCjDBc_5_15", "train", ("a squirrel eats, slowly",)),
        ("_UqnTFs1BLc_23_27", "val", (UNICODE,)),
    ]
    assert summary.counts["captions dropped (empty)"] == 1


def test_csv_without_language_column_is_an_error(root: Path):
    csv_file = root / "corpus.csv"
    csv_file.write_text("VideoID,Start,End,Description\nabc,1,2,a caption\n")
    with pytest.raises(ConversionError, match=rf"{re.escape(str(csv_file))}:1: missing column 'Language'"):
        run(root, "--descriptions", str(csv_file), "--mapping", str(root / "youtube_mapping.txt"))


@pytest.mark.parametrize(
    ("file", "text", "message"),
    [
        (
            "AllVideoDescriptions.txt",
            "# c\nabc_1_2 fine\nnot-a-clip-name a caption\n",
            r"AllVideoDescriptions.txt:3: expected '<youtube_id>_<start>_<end> <caption>'",
        ),
        ("youtube_mapping.txt", "abc_1_2 vid1\nabc_1_2 vid2\n", r"youtube_mapping.txt:2: duplicate clip id 'abc_1_2'"),
        ("youtube_mapping.txt", "abc_1_2 vid1\ndef_1_2 vid1\n", r"youtube_mapping.txt:2: vid1 is given twice"),
        ("youtube_mapping.txt", "abc_1_2 vid1\ndef_1_2\n", r"youtube_mapping.txt:2: expected '<youtube_id>_<start>"),
    ],
)
def test_malformed_lines_are_named(root: Path, file: str, text: str, message: str):
    (root / file).write_text(text)
    with pytest.raises(ConversionError, match=message):
        run(
            root,
            "--descriptions",
            str(root / "AllVideoDescriptions.txt"),
            "--mapping",
            str(root / "youtube_mapping.txt"),
            "--split-sizes",
            "1",
            "1",
            "0",
        )


def test_invalid_utf8_names_the_line(root: Path):
    (root / "AllVideoDescriptions.txt").write_bytes(b"abc_1_2 fine\nabc_1_2 caf\xe9\n")
    with pytest.raises(ConversionError, match=r"AllVideoDescriptions.txt:2: not valid UTF-8"):
        run(
            root,
            "--descriptions",
            str(root / "AllVideoDescriptions.txt"),
            "--mapping",
            str(root / "youtube_mapping.txt"),
        )


def test_descriptions_need_an_order(root: Path):
    with pytest.raises(ConversionError, match=r"give --mapping or --clip-list"):
        run(root, "--descriptions", str(root / "AllVideoDescriptions.txt"))


def test_lavis_files(root: Path):
    (root / "cap_train.json").write_text(
        json.dumps(
            [
                {"video": "-4wsuPCjDBc_5_15.avi", "caption": "a squirrel"},
                {"video": "-4wsuPCjDBc_5_15.avi", "caption": "it eats"},
            ]
        )
    )
    (root / "cap_val.json").write_text(json.dumps([{"video": "gone_1_2.avi", "caption": ["a b", "c d"]}]))
    summary = run(root, "--lavis", f"train={root / 'cap_train.json'}", f"val={root / 'cap_val.json'}")
    assert rows(root) == [
        ("-4wsuPCjDBc_5_15", "train", "YouTubeClips/-4wsuPCjDBc_5_15.avi", ("a squirrel", "it eats")),
        ("gone_1_2", "val", "gone_1_2.avi", ("a b", "c d")),
    ]
    assert summary.videos_not_found == ["gone_1_2"]
