"""ActivityNet Captions to a manifest: one row per annotated event segment (clip captioning with true segments).

The official files ``train.json``, ``val_1.json`` and ``val_2.json`` map a video id (``v_<youtube id>``) to
``{"duration": seconds, "timestamps": [[start, end], ...], "sentences": [...]}``. val_1 and val_2 annotate the same
videos twice (different annotators, different segments); both become split "val" (the test annotations were never
released, so published numbers are on val) and each row records its ``reference_set``, which the paragraph
evaluation (``simvlg_video.eval.paragraph``) uses to build one reference paragraph per set.

Segments that run past the video's duration (or start before 0) are clipped to it; segments that are empty after
clipping, or that end before they start, are dropped and counted. A video id finds its file with or without the
``v_`` prefix and with any common video extension.
"""

from __future__ import annotations

import argparse
import math
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from simvlg_video.data.manifest import SPLITS
from simvlg_video.data_tools.conversion import (
    Clip,
    Conversion,
    ConversionError,
    field_of,
    load_json,
)

VIDEO_SUFFIX = ".mp4"
VIDEO_PREFIX = "v_"
# reference set (the official file's name) -> the split its rows go to
DEFAULT_SPLITS = {"train": "train", "val_1": "val", "val_2": "val"}


def convert_activitynet(files: Mapping[str, Path], splits: Mapping[str, str] = DEFAULT_SPLITS) -> Conversion:
    """Rows for every segment of every file; ``files`` maps a reference set name (train, val_1, val_2) to its file.

    Clip ids are ``<video id>:<reference set>:<segment index in the file>``; rows carry ``attributes``
    ``{"video_id", "reference_set"}``.
    """
    clips: list[Clip] = []
    counts: Counter[str] = Counter()
    for reference_set, path in files.items():
        split = splits[reference_set]
        if split not in SPLITS:
            raise ConversionError(f"reference set {reference_set!r}: split {split!r} is not one of {list(SPLITS)}")
        document = load_json(path)
        if not isinstance(document, dict):
            raise ConversionError(
                f"{path}: expected a JSON object keyed by video id (ActivityNet Captions), got a "
                f"{type(document).__name__}"
            )
        for video_id, entry in document.items():
            clips.extend(_video_segments(path, video_id, entry, reference_set, split, counts))
    return Conversion(clips, counts)


def _video_segments(
    path: Path, video_id: str, entry: object, reference_set: str, split: str, counts: Counter[str]
) -> list[Clip]:
    where = f"{path}: [{video_id!r}]"
    duration = field_of(entry, "duration", (int, float), where)
    timestamps = field_of(entry, "timestamps", list, where)
    sentences = field_of(entry, "sentences", list, where)
    if not math.isfinite(duration) or duration <= 0:
        raise ConversionError(f"{where}.duration: expected a positive number of seconds, got {duration!r}")
    if len(timestamps) != len(sentences):
        raise ConversionError(f"{where}: {len(timestamps)} timestamps but {len(sentences)} sentences")
    names = (
        (video_id, video_id.removeprefix(VIDEO_PREFIX))
        if video_id.startswith(VIDEO_PREFIX)
        else (video_id, VIDEO_PREFIX + video_id)
    )
    clips = []
    for index, (stamp, sentence) in enumerate(zip(timestamps, sentences)):
        start, end = _timestamp(stamp, f"{where}.timestamps[{index}]")
        if not isinstance(sentence, str):
            raise ConversionError(f"{where}.sentences[{index}]: expected a string, got {sentence!r}")
        if start > end:
            counts["segments dropped (end before start)"] += 1
            continue
        clipped_start, clipped_end = max(start, 0.0), min(end, float(duration))
        if clipped_end <= clipped_start:
            counts["segments dropped (empty within the duration)"] += 1
            continue
        if not sentence.strip():
            counts["segments dropped (empty caption)"] += 1
            continue
        if (clipped_start, clipped_end) != (start, end):
            counts["segments clipped to the duration"] += 1
        attributes = {"video_id": video_id, "reference_set": reference_set}
        clips.append(
            Clip(
                f"{video_id}:{reference_set}:{index}",
                names,
                split,
                [sentence.strip()],
                clipped_start,
                clipped_end,
                attributes,
            )
        )
    return clips


def _timestamp(stamp: object, where: str) -> tuple[float, float]:
    if (
        not isinstance(stamp, list)
        or len(stamp) != 2
        or not all(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) for t in stamp)
    ):
        raise ConversionError(f"{where}: expected [start, end] in seconds, got {stamp!r}")
    return float(stamp[0]), float(stamp[1])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train", type=Path, metavar="FILE", help="train.json")
    parser.add_argument("--val-1", type=Path, metavar="FILE", help="val_1.json")
    parser.add_argument("--val-2", type=Path, metavar="FILE", help="val_2.json")
    parser.add_argument(
        "--val-split", default="val", choices=SPLITS, help="manifest split of val_1 and val_2 (default: val)"
    )


def from_arguments(args: argparse.Namespace) -> Conversion:
    files = {
        name: path
        for name, path in (("train", args.train), ("val_1", args.val_1), ("val_2", args.val_2))
        if path is not None
    }
    if not files:
        raise ConversionError("give at least one of --train, --val-1, --val-2")
    return convert_activitynet(files, {"train": "train", "val_1": args.val_split, "val_2": args.val_split})
