"""What every dataset converter shares: strict annotation reading, finding videos by name, writing the manifest.

A converter turns official annotation files into :class:`Clip` objects (no file system access beyond reading the
annotations); :func:`write_conversion` then finds each clip's video under the data root, writes the manifest
(`simvlg_video.data.manifest`) and returns a :class:`ConversionSummary`. Clips whose video is not found stay in the
manifest (under the path the video would conventionally have) and are counted: ``check_videos`` is the step that
filters them out.
"""

from __future__ import annotations

import json
import os
import statistics
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from simvlg_video.data.manifest import IMAGE_SUFFIXES, SPLITS, json_problem, write_manifest
from simvlg_video.errors import UserError

# Extensions a downloaded video may have; the official sets use .mp4 (MSR-VTT), .avi (MSVD), .mp4/.mkv/.webm
# (ActivityNet, fetched from YouTube).
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".flv", ".3gp", ".mpg", ".mpeg", ".ts", ".wmv")
SHOWN = 5


class ConversionError(UserError, ValueError):
    """Annotations or videos that cannot be converted; the message names the file and what is wrong."""


@dataclass
class Clip:
    """One manifest row before its file is located. ``video_names`` are the file stems the video may have; an image
    row has none and names its image file in ``image`` instead."""

    clip_id: str
    video_names: tuple[str, ...]
    split: str
    captions: list[str]
    start: float | None = None
    end: float | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    image: str | None = None


@dataclass
class Conversion:
    """A converter's output: the clips, and how many items were dropped or changed, for which reason."""

    clips: list[Clip]
    counts: Counter[str] = field(default_factory=Counter)


@dataclass
class ConversionSummary:
    """What a conversion wrote: clips per split, captions per clip, videos not found, items dropped or changed."""

    manifest: Path
    clips_per_split: dict[str, int]
    captions_per_clip: dict[str, tuple[int, float, int]]  # split -> (min, mean, max)
    videos_not_found: list[str]  # or images: see `media`
    counts: dict[str, int]
    media: str = "videos"

    def format(self) -> str:
        lines = [f"wrote {self.manifest}"]
        for split, count in self.clips_per_split.items():
            low, mean, high = self.captions_per_clip[split]
            lines.append(f"  {split}: {count} clips, captions per clip min {low} / mean {mean:.2f} / max {high}")
        missing = self.videos_not_found
        shown = ", ".join(missing[:SHOWN]) + (", ..." if len(missing) > SHOWN else "")
        lines.append(f"  {self.media} not found: {len(missing)}" + (f" ({shown})" if missing else ""))
        for reason, count in self.counts.items():
            lines.append(f"  {reason}: {count}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- reading


def load_json(path: Path) -> Any:
    """A JSON file, with duplicate object keys as errors (plain ``json.load`` would keep the last one silently)."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                raise ConversionError(f"{path}: duplicate key {key!r}")
            seen[key] = value
        return seen

    text = read_text(path)
    try:
        return json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as error:
        raise ConversionError(f"{path}: not valid JSON ({json_problem(error)})") from None


def read_text(path: Path) -> str:
    """A UTF-8 text file (a leading byte-order mark is dropped); undecodable bytes are an error naming the line."""
    if not path.is_file():
        raise ConversionError(f"{path}: annotation file not found")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ConversionError(f"{path}:{line}: not valid UTF-8 ({error.reason})") from None


def clean_captions(texts: Iterable[str], counts: Counter[str]) -> list[str]:
    """Captions without surrounding whitespace; those empty after stripping are dropped and counted."""
    kept = []
    for text in texts:
        if text.strip():
            kept.append(text.strip())
        else:
            counts["captions dropped (empty)"] += 1
    return kept


def parse_split_files(items: Sequence[str], option: str) -> dict[str, Path]:
    """``["train=cap_train.json", ...]`` (a command-line option's values) as {split: path}."""
    files: dict[str, Path] = {}
    for item in items:
        split, sep, path = item.partition("=")
        if not sep or split not in SPLITS or not path:
            raise ConversionError(f"{option} {item!r}: expected SPLIT=FILE with SPLIT one of {list(SPLITS)}")
        if split in files:
            raise ConversionError(f"{option}: split {split!r} given twice")
        files[split] = Path(path)
    return files


def read_lavis_captions(files: Mapping[str, Path]) -> Conversion:
    """LAVIS caption files (``cap_train.json`` ...): lists of ``{"video": "name.mp4", "caption": str | [str]}``.

    The clip id is the video's file stem. A video may appear once per caption (string captions, merged) or once
    with a list; a video listed twice with lists, or in two split files, is a duplicate clip id.
    """
    clips: dict[str, Clip] = {}
    listed: set[str] = set()  # clip ids given with a caption list
    source: dict[str, Path] = {}
    counts: Counter[str] = Counter()
    for split, path in files.items():
        for where, video, caption in lavis_entries(path, "video"):
            texts = [caption] if isinstance(caption, str) else caption
            if not all(isinstance(text, str) for text in texts):
                raise ConversionError(f"{where}.caption: expected a string or a list of strings, got {caption!r}")
            clip_id = PurePosixPath(video).stem
            if not clip_id:
                raise ConversionError(f"{where}.video: expected a video file name, got {video!r}")
            if clip_id in source and source[clip_id] != path:
                raise ConversionError(f"{where}.video: duplicate clip id {clip_id!r} (also in {source[clip_id]})")
            if clip_id in listed or (isinstance(caption, list) and clip_id in clips):
                raise ConversionError(
                    f"{where}.video: duplicate clip id {clip_id!r} (an entry with a caption list "
                    "must be the video's only entry)"
                )
            if isinstance(caption, list):
                listed.add(clip_id)
            source[clip_id] = path
            clip = clips.setdefault(clip_id, Clip(clip_id, (clip_id,), split, []))
            clip.captions.extend(clean_captions(texts, counts))
    return Conversion(drop_uncaptioned(clips.values(), counts), counts)


def lavis_entries(path: Path, media_key: str) -> Iterator[tuple[str, str, str | list]]:
    """(where, file, caption) of each entry of a LAVIS caption file: a JSON list of ``{media_key: str, "caption":
    str | [str]}`` objects, each checked; `where` names the entry for errors."""
    entries = load_json(path)
    if not isinstance(entries, list):
        raise ConversionError(
            f"{path}: expected a JSON list of {{'{media_key}', 'caption'}} objects (LAVIS caption "
            f"file), got a {type(entries).__name__}"
        )
    for position, entry in enumerate(entries):
        where = f"{path}: [{position}]"
        yield where, field_of(entry, media_key, str, where), field_of(entry, "caption", (str, list), where)


def drop_uncaptioned(clips: Iterable[Clip], counts: Counter[str]) -> list[Clip]:
    """Clips that kept at least one caption; the others are counted (a manifest row needs a caption)."""
    kept = []
    for clip in clips:
        if clip.captions:
            kept.append(clip)
        else:
            counts["clips dropped (no non-empty caption)"] += 1
    return kept


def field_of(entry: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """``entry[key]``, checked to be an object holding a value of ``kind``; errors name ``where`` and the key."""
    if not isinstance(entry, dict):
        raise ConversionError(f"{where}: expected a JSON object, got {entry!r}")
    if key not in entry:
        raise ConversionError(f"{where}: missing key {key!r}")
    value = entry[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise ConversionError(f"{where}.{key}: expected {names}, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------- videos


class MediaIndex:
    """Video files under a folder, found by file stem, and image files, found by file name (searched recursively,
    symbolic links followed, each real folder once: a link back up the tree, a loop, is not entered again)."""

    def __init__(self, folder: Path) -> None:
        if not folder.is_dir():
            raise ConversionError(f"{folder}: video folder not found")
        self.folder = folder
        self.files: dict[str, list[Path]] = {}
        self.images: dict[str, list[Path]] = {}
        seen = {_identity(folder)}
        for directory, subdirs, names in os.walk(folder, followlinks=True):
            kept = []
            for name in sorted(d for d in subdirs if not d.startswith(".")):
                identity = _identity(Path(directory) / name)
                if identity is not None and identity not in seen:
                    seen.add(identity)
                    kept.append(name)
            subdirs[:] = kept
            for name in sorted(names):
                path = Path(directory) / name
                if name.startswith("."):
                    continue
                if path.suffix.lower() in VIDEO_SUFFIXES:
                    self.files.setdefault(path.stem, []).append(path)
                elif path.suffix.lower() in IMAGE_SUFFIXES:
                    self.images.setdefault(name, []).append(path)

    def find_image(self, name: str) -> Path | None:
        """The one image file called ``name`` (a path's last part); None when there is none, an error when there
        are several."""
        found = self.images.get(PurePosixPath(name).name, [])
        if len(found) > 1:
            raise ConversionError(f"image {name!r} matches several files ({', '.join(map(str, found))}); keep one")
        return found[0] if found else None

    def find(self, names: Sequence[str]) -> Path | None:
        """The one file whose stem is one of ``names``; None when there is none, an error when there are several."""
        found = [path for name in names for path in self.files.get(name, ())]
        if len(found) > 1:
            raise ConversionError(
                f"video {names[0]!r} matches several files ({', '.join(map(str, found))}); keep one of them"
            )
        return found[0] if found else None


def _identity(folder: Path) -> tuple[int, int] | None:
    """(device, inode) of the folder a path leads to, links followed; None when it cannot be read."""
    try:
        status = folder.stat()
    except OSError:
        return None
    return status.st_dev, status.st_ino


def write_conversion(conversion: Conversion, videos: MediaIndex, out: Path, default_suffix: str) -> ConversionSummary:
    """Locate each clip's video (or image), write the manifest ``out`` and summarise.

    Paths are written relative to the manifest's folder when the file lies under it, else absolute. A clip whose
    video is missing gets ``<video folder>/<first name><default_suffix>``; an image, ``<folder>/<its name as given>``.
    """
    out = Path(os.path.abspath(out))
    rows = []
    missing: dict[str, None] = {}  # ordered set of video names
    for clip in conversion.clips:
        if clip.image is not None:
            path = videos.find_image(clip.image)
            if path is None:
                missing[clip.image] = None
                path = videos.folder / clip.image
            row = {"clip_id": clip.clip_id, "image": _manifest_path(path, out.parent)}
        else:
            path = videos.find(clip.video_names)
            if path is None:
                missing[clip.video_names[0]] = None
                path = videos.folder / f"{clip.video_names[0]}{default_suffix}"
            row = {
                "clip_id": clip.clip_id,
                "video": _manifest_path(path, out.parent),
                "start": clip.start,
                "end": clip.end,
            }
        row.update(captions=clip.captions, split=clip.split)
        if clip.attributes:
            row["attributes"] = clip.attributes
        rows.append(row)
    if not rows:
        raise ConversionError(f"no clips to write to {out}: every clip was dropped ({dict(conversion.counts)})")
    write_manifest(out, rows)
    per_split = Counter(clip.split for clip in conversion.clips)
    return ConversionSummary(
        manifest=out,
        clips_per_split={split: per_split[split] for split in SPLITS if per_split[split]},
        captions_per_clip=_caption_counts(conversion.clips),
        videos_not_found=list(missing),
        counts=dict(conversion.counts),
        media="images" if any(clip.image is not None for clip in conversion.clips) else "videos",
    )


def _manifest_path(video: Path, manifest_dir: Path) -> str:
    video = Path(os.path.abspath(video))
    if video.is_relative_to(manifest_dir):
        return video.relative_to(manifest_dir).as_posix()
    return str(video)


def _caption_counts(clips: Sequence[Clip]) -> dict[str, tuple[int, float, int]]:
    counts: dict[str, list[int]] = {}
    for clip in clips:
        counts.setdefault(clip.split, []).append(len(clip.captions))
    return {split: (min(c), statistics.fmean(c), max(c)) for split, c in counts.items()}
