"""MSVD (the Microsoft Research Video Description corpus) to a manifest.

Captions come from ``AllVideoDescriptions.txt`` (lines ``<youtube_id>_<start>_<end> <caption>``, comments start
with ``#``) or from the multilingual CSV (columns VideoID, Start, End, ..., Language, Description; only English rows
are kept), or from LAVIS caption files. The usual split takes the 1,970 clips in the order of ``youtube_mapping.txt``
(``<youtube_id>_<start>_<end> vid<N>``, ordered by N) or of a plain clip list: the first 1,200 train, the next 100
val, the last 670 test. Clip ids are the ``<youtube_id>_<start>_<end>`` names the video files carry.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from simvlg_video.data.manifest import SPLITS
from simvlg_video.data_tools.conversion import (
    VIDEO_SUFFIXES,
    Clip,
    Conversion,
    ConversionError,
    clean_captions,
    drop_uncaptioned,
    parse_split_files,
    read_lavis_captions,
    read_text,
)

VIDEO_SUFFIX = ".avi"
USUAL_SPLIT_SIZES = (1200, 100, 670)
CLIP_NAME = re.compile(r"(?P<youtube_id>.+)_(?P<start>\d+)_(?P<end>\d+)")
MAPPING_LINE = re.compile(r"(?P<clip>\S+)\s+vid(?P<number>\d+)")
CSV_COLUMNS = ("VideoID", "Start", "End", "Language", "Description")


def read_descriptions(path: Path, counts: Counter[str]) -> dict[str, list[str]]:
    """Captions per clip name, in file order: the CSV variant when the file ends in .csv, else the text file."""
    if path.suffix.lower() == ".csv":
        return _read_csv(path, counts)
    captions: dict[str, list[str]] = {}
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, *rest = line.split(maxsplit=1)
        caption = rest[0] if rest else ""
        if not CLIP_NAME.fullmatch(name):
            raise ConversionError(f"{path}:{number}: expected '<youtube_id>_<start>_<end> <caption>', got {line!r}")
        captions.setdefault(name, []).extend(clean_captions([caption], counts))
    return captions


def _read_csv(path: Path, counts: Counter[str]) -> dict[str, list[str]]:
    rows = csv.DictReader(io.StringIO(read_text(path), newline=""))
    missing = [column for column in CSV_COLUMNS if column not in (rows.fieldnames or ())]
    if missing:
        raise ConversionError(f"{path}:1: missing column {missing[0]!r} (MSVD CSV columns include {list(CSV_COLUMNS)})")
    captions: dict[str, list[str]] = {}
    for row in rows:
        number = rows.line_num
        values = [row[column] for column in CSV_COLUMNS]
        if any(value is None for value in values):
            raise ConversionError(f"{path}:{number}: expected {len(rows.fieldnames)} columns, the row is shorter")
        youtube_id, start, end, language, description = (value.strip() for value in values)
        if not youtube_id or not start.isdigit() or not end.isdigit():
            raise ConversionError(
                f"{path}:{number}: expected a VideoID and integer Start, End; got {youtube_id!r}, {start!r}, {end!r}"
            )
        if language.lower() != "english":
            continue
        captions.setdefault(f"{youtube_id}_{start}_{end}", []).extend(clean_captions([description], counts))
    return captions


def read_mapping(path: Path) -> list[str]:
    """Clip names of ``youtube_mapping.txt`` ordered by their ``vid<N>`` number."""
    numbered: dict[int, str] = {}
    names: dict[str, int] = {}
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        match = MAPPING_LINE.fullmatch(line.strip())
        if not match or not CLIP_NAME.fullmatch(match["clip"]):
            raise ConversionError(f"{path}:{number}: expected '<youtube_id>_<start>_<end> vid<N>', got {line!r}")
        clip, vid = match["clip"], int(match["number"])
        if clip in names:
            raise ConversionError(f"{path}:{number}: duplicate clip id {clip!r} (also vid{names[clip]})")
        if vid in numbered:
            raise ConversionError(f"{path}:{number}: vid{vid} is given twice")
        numbered[vid], names[clip] = clip, vid
    return [numbered[vid] for vid in sorted(numbered)]


def read_clip_list(path: Path) -> list[str]:
    """Clip names, one per line, in order (a video extension after the name is allowed)."""
    order: list[str] = []
    seen: set[str] = set()
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        if Path(name).suffix.lower() in VIDEO_SUFFIXES:
            name = Path(name).stem
        if not CLIP_NAME.fullmatch(name):
            raise ConversionError(f"{path}:{number}: expected '<youtube_id>_<start>_<end>', got {line!r}")
        if name in seen:
            raise ConversionError(f"{path}:{number}: duplicate clip id {name!r}")
        seen.add(name)
        order.append(name)
    return order


def convert_descriptions(
    captions: dict[str, list[str]],
    order: Sequence[str],
    split_sizes: Sequence[int],
    order_file: Path,
    counts: Counter[str],
) -> Conversion:
    """Clips in ``order``, split by position: the first ``split_sizes[0]`` train, the next val, the rest test.

    A listed clip without captions keeps its position (so the others keep their split) and is dropped; described
    clips that the order does not list are dropped. Both are counted.
    """
    if len(order) != sum(split_sizes):
        raise ConversionError(
            f"{order_file}: lists {len(order)} clips, but split sizes {list(split_sizes)} "
            f"need {sum(split_sizes)} (give --split-sizes TRAIN VAL TEST)"
        )
    bounds = [sum(split_sizes[: i + 1]) for i in range(len(SPLITS))]
    clips = [
        Clip(name, (name,), next(s for s, b in zip(SPLITS, bounds) if position < b), captions.get(name, []))
        for position, name in enumerate(order)
    ]
    unlisted = len(set(captions) - set(order))
    if unlisted:
        counts[f"described clips dropped (not in {order_file.name})"] += unlisted
    return Conversion(drop_uncaptioned(clips, counts), counts)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--descriptions",
        type=Path,
        metavar="FILE",
        help="AllVideoDescriptions.txt, or the multilingual corpus CSV (English rows are used)",
    )
    source.add_argument(
        "--lavis",
        nargs="+",
        metavar="SPLIT=FILE",
        help="LAVIS caption files, e.g. train=cap_train.json val=cap_val.json test=cap_test.json",
    )
    order = parser.add_mutually_exclusive_group()
    order.add_argument(
        "--mapping",
        type=Path,
        metavar="FILE",
        help="youtube_mapping.txt: '<youtube_id>_<start>_<end> vid<N>' lines; the split follows N",
    )
    order.add_argument("--clip-list", type=Path, metavar="FILE", help="clip names, one per line, in split order")
    parser.add_argument(
        "--split-sizes",
        type=int,
        nargs=3,
        default=USUAL_SPLIT_SIZES,
        metavar=("TRAIN", "VAL", "TEST"),
        help="clips per split, taken in order (default: the usual 1200 100 670)",
    )


def from_arguments(args: argparse.Namespace) -> Conversion:
    if args.lavis:
        if args.mapping or args.clip_list:
            raise ConversionError("--mapping/--clip-list go with --descriptions; LAVIS files carry their own splits")
        return read_lavis_captions(parse_split_files(args.lavis, "--lavis"))
    order_file = args.mapping or args.clip_list
    if order_file is None:
        raise ConversionError("--descriptions needs the clip order of the split: give --mapping or --clip-list")
    if min(args.split_sizes) < 0:
        raise ConversionError(f"--split-sizes must not be negative, got {args.split_sizes}")
    order = read_mapping(order_file) if args.mapping else read_clip_list(order_file)
    counts: Counter[str] = Counter()
    captions = read_descriptions(args.descriptions, counts)
    return convert_descriptions(captions, order, args.split_sizes, order_file, counts)
