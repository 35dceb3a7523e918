"""MSR-VTT to a manifest: from the official ``*_videodatainfo.json`` files or from LAVIS caption files.

The official release has 10,000 clips ``video0`` .. ``video9999`` (6,513 train, 497 validate, 2,990 test), 20
captions each, described by ``train_val_videodatainfo.json`` and ``test_videodatainfo.json``:
``{"videos": [{"video_id": "video0", "split": "train", ...}], "sentences": [{"video_id": "video0",
"caption": "...", "sen_id": 0}]}``. The official split name "validate" becomes our "val".
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from simvlg_video.data_tools.conversion import (
    Clip,
    Conversion,
    ConversionError,
    clean_captions,
    drop_uncaptioned,
    field_of,
    load_json,
    parse_split_files,
    read_lavis_captions,
)

VIDEO_SUFFIX = ".mp4"
OFFICIAL_SPLITS = {"train": "train", "validate": "val", "val": "val", "test": "test"}


def convert_official(paths: Sequence[Path]) -> Conversion:
    """Clips of one or more official videodatainfo files, in file order; captions in sentence order."""
    clips: dict[str, Clip] = {}
    first_seen: dict[str, str] = {}
    counts: Counter[str] = Counter()
    documents = [(path, _official_document(path)) for path in paths]
    for path, document in documents:
        for position, video in enumerate(document["videos"]):
            where = f"{path}: videos[{position}]"
            video_id = field_of(video, "video_id", str, where)
            split = field_of(video, "split", str, where)
            if split not in OFFICIAL_SPLITS:
                raise ConversionError(f"{where}.split: expected one of {sorted(OFFICIAL_SPLITS)}, got {split!r}")
            if video_id in clips:
                raise ConversionError(
                    f"{where}.video_id: duplicate clip id {video_id!r} (first at {first_seen[video_id]})"
                )
            first_seen[video_id] = where
            clips[video_id] = Clip(video_id, (video_id,), OFFICIAL_SPLITS[split], [])
    for path, document in documents:
        for position, sentence in enumerate(document["sentences"]):
            where = f"{path}: sentences[{position}]"
            video_id = field_of(sentence, "video_id", str, where)
            caption = field_of(sentence, "caption", str, where)
            field_of(sentence, "sen_id", int, where)
            if video_id not in clips:
                raise ConversionError(
                    f"{where}.video_id: {video_id!r} is not in the 'videos' list of {', '.join(str(p) for p in paths)}"
                )
            clips[video_id].captions.extend(clean_captions([caption], counts))
    return Conversion(drop_uncaptioned(clips.values(), counts), counts)


def _official_document(path: Path) -> dict:
    document = load_json(path)
    if not isinstance(document, dict):
        raise ConversionError(
            f"{path}: expected a JSON object with keys 'videos' and 'sentences' (MSR-VTT "
            f"videodatainfo), got a {type(document).__name__}"
        )
    for key in ("videos", "sentences"):
        if key not in document:
            raise ConversionError(
                f"{path}: missing key {key!r} (an MSR-VTT videodatainfo file has 'videos' and 'sentences')"
            )
        if not isinstance(document[key], list):
            raise ConversionError(f"{path}: key {key!r}: expected a list, got a {type(document[key]).__name__}")
    return document


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--official",
        type=Path,
        nargs="+",
        metavar="FILE",
        help="train_val_videodatainfo.json and/or test_videodatainfo.json",
    )
    source.add_argument(
        "--lavis",
        nargs="+",
        metavar="SPLIT=FILE",
        help="LAVIS caption files, e.g. train=cap_train.json val=cap_val.json test=cap_test.json",
    )


def from_arguments(args: argparse.Namespace) -> Conversion:
    if args.official:
        return convert_official(args.official)
    return read_lavis_captions(parse_split_files(args.lavis, "--lavis"))
