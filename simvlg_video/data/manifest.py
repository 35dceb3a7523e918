"""Read and write clip manifests: JSONL, one clip per line, what every dataset converter produces.

A line looks like ``{"clip_id": "v1", "video": "videos/v1.mp4", "start": null, "end": null,
"captions": ["a man runs"], "split": "train"}`` plus optional probed metadata (``num_frames``, ``fps``,
``duration``, ``width``, ``height``, ``keyframes``: frame numbers of the keyframes, ``rotation``: degrees
counter-clockwise; see ``probe.py`` and ``python -m simvlg_video.data_tools.probe_videos``) and an optional
free-form ``attributes`` dict. ``video`` is relative to the manifest's folder unless absolute. Reading is strict:
unknown keys and wrong types are errors that name the file, the line and the key, so a typo cannot silently drop a
field.

An image is a clip of one still frame: its line has ``"image": "train2017/000000000009.jpg"`` in place of ``video``
and no ``start``/``end`` (``{"clip_id": "coco_9", "image": ..., "captions": [...], "split": "train"}``); loaders give
it as many identical frames as a clip has, so the image stage and video runs share one pipeline.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simvlg_video.errors import UserError

SPLITS = ("train", "val", "test")
REQUIRED_KEYS = ("clip_id", "video", "start", "end", "captions", "split")
IMAGE_KEYS = ("clip_id", "image", "captions", "split")  # an image line: no start/end
METADATA_KEYS = ("num_frames", "fps", "duration", "width", "height", "keyframes", "rotation")
KNOWN_KEYS = (*REQUIRED_KEYS, *METADATA_KEYS, "attributes", "image")
# Files `caption` reads as still images (everything else is opened as a video, an animated GIF included).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def json_problem(error: json.JSONDecodeError, line: bool = True) -> str:
    """What is wrong and where, in one phrase ("Unterminated string starting at line 3 column 7"): the parser's
    message without its dangling "at"."""
    where = f"line {error.lineno} column {error.colno}" if line else f"column {error.colno}"
    return f"{error.msg.removesuffix(' at')} at {where}"


class ManifestError(UserError, ValueError):
    """A manifest line is malformed; the message names the file, the line and the key."""


@dataclass(frozen=True)
class ClipRecord:
    """One manifest line, checked. ``video`` is the path as written (of the image, for an image line);
    ``video_path`` is it resolved."""

    clip_id: str
    video: str
    video_path: Path
    start: float | None
    end: float | None
    captions: tuple[str, ...]
    split: str
    num_frames: int | None = None
    fps: float | None = None
    duration: float | None = None
    width: int | None = None
    height: int | None = None
    keyframes: tuple[int, ...] | None = None
    rotation: int | None = None
    attributes: dict[str, Any] = field(default_factory=dict, hash=False)
    is_image: bool = False

    @classmethod
    def for_file(cls, path: str | Path) -> ClipRecord:
        """A record for a video or image file on its own (no captions, the whole video): what `caption` reads."""
        path = Path(path)
        return cls(
            clip_id=str(path),
            video=str(path),
            video_path=path.resolve(),
            start=None,
            end=None,
            captions=(),
            split="test",
            is_image=path.suffix.lower() in IMAGE_SUFFIXES,
        )

    def to_dict(self) -> dict[str, Any]:
        """The manifest line for this record (metadata left out where unknown)."""
        line: dict[str, Any] = (
            {"clip_id": self.clip_id, "image": self.video}
            if self.is_image
            else {"clip_id": self.clip_id, "video": self.video, "start": self.start, "end": self.end}
        )
        line.update(captions=list(self.captions), split=self.split)
        for key in METADATA_KEYS:
            if getattr(self, key) is not None:
                line[key] = list(self.keyframes) if key == "keyframes" else getattr(self, key)
        if self.attributes:
            line["attributes"] = self.attributes
        return line


def read_manifest(path: str | Path, split: str | None = None) -> list[ClipRecord]:
    """All records of a manifest (or those of one ``split``), in file order. The whole file is checked either way."""
    path = Path(path)
    if split is not None and split not in SPLITS:
        raise ManifestError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    if not path.is_file():
        raise ManifestError(f"{path}: manifest file not found")
    records: list[ClipRecord] = []
    first_line_of: dict[str, int] = {}
    with path.open(encoding="utf-8") as lines:
        for line_number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            location = f"{path}:{line_number}"
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as error:
                raise ManifestError(f"{location}: not valid JSON ({json_problem(error, line=False)})") from None
            record = parse_record(raw, path.parent, location)
            if record.clip_id in first_line_of:
                raise ManifestError(
                    f"{location}: key 'clip_id': duplicate {record.clip_id!r}"
                    f" (first seen on line {first_line_of[record.clip_id]})"
                )
            first_line_of[record.clip_id] = line_number
            records.append(record)
    return [record for record in records if split is None or record.split == split]


def write_manifest(path: str | Path, records: Iterable[ClipRecord | Mapping[str, Any]]) -> None:
    """Write records (or line dicts, checked like read lines) as JSONL, atomically: readers never see half a file.

    A record's ``video`` is written as it was read, so a relative path keeps meaning "relative to the manifest's
    folder"; write into the folder it came from, or use absolute paths.
    """
    path = Path(path)
    lines = []
    seen: set[str] = set()
    for position, item in enumerate(records):
        record = item if isinstance(item, ClipRecord) else parse_record(item, path.parent, f"record {position}")
        if record.clip_id in seen:
            raise ManifestError(f"record {position}: key 'clip_id': duplicate {record.clip_id!r}")
        seen.add(record.clip_id)
        lines.append(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as temp_file:
            temp_file.writelines(lines)
            temp_file.flush()
            os.fsync(temp_file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def parse_record(raw: Any, base_dir: Path, location: str) -> ClipRecord:
    """Check one manifest object and build its record; ``location`` (e.g. 'file:line') prefixes every error."""
    if not isinstance(raw, Mapping):
        raise ManifestError(f"{location}: expected a JSON object, got {type(raw).__name__}")
    is_image = "image" in raw
    if is_image:
        extra = [key for key in ("video", "start", "end") if key in raw]
        if extra:
            raise ManifestError(f"{location}: key {extra[0]!r}: an image line (it has 'image') has no {extra[0]!r}")
    required = IMAGE_KEYS if is_image else REQUIRED_KEYS
    missing = [key for key in required if key not in raw]
    if missing:
        raise ManifestError(
            f"{location}: missing key {missing[0]!r} (required keys: {list(required)}"
            f"{'' if is_image else '; an image line has ' + repr(list(IMAGE_KEYS))})"
        )
    unknown = sorted(set(raw) - set(KNOWN_KEYS))
    if unknown:
        raise ManifestError(
            f"{location}: unknown key {unknown[0]!r}; allowed keys are {list(KNOWN_KEYS)}"
            " (put extra information under 'attributes')"
        )

    def fail(key: str, expected: str) -> ManifestError:
        return ManifestError(f"{location}: key {key!r}: expected {expected}, got {raw[key]!r}")

    media_key = "image" if is_image else "video"
    clip_id, video, split, captions = raw["clip_id"], raw[media_key], raw["split"], raw["captions"]
    if not isinstance(clip_id, str) or not clip_id:
        raise fail("clip_id", "a non-empty string")
    if not isinstance(video, str) or not video:
        raise fail(media_key, "a non-empty path string")
    if split not in SPLITS:
        raise fail("split", f"one of {list(SPLITS)}")
    if not isinstance(captions, list) or not captions:
        raise fail("captions", "a non-empty list of strings")
    if not all(isinstance(caption, str) and caption.strip() for caption in captions):
        raise fail("captions", "only non-empty strings")
    start = _optional_number(raw, "start", fail, minimum=0.0)
    end = _optional_number(raw, "end", fail, minimum=0.0)
    if start is not None and end is not None and end <= start:
        raise ManifestError(f"{location}: key 'end': expected a time after start={start}, got {end!r}")
    attributes = raw.get("attributes", {})
    if not isinstance(attributes, dict):
        raise fail("attributes", "a JSON object")
    return ClipRecord(
        clip_id=clip_id,
        video=video,
        video_path=Path(os.path.abspath(base_dir / video)),
        start=start,
        end=end,
        captions=tuple(captions),
        split=split,
        num_frames=_optional_int(raw, "num_frames", fail, minimum=1),
        fps=_optional_number(raw, "fps", fail, minimum=0.0, strictly_above=True),
        duration=_optional_number(raw, "duration", fail, minimum=0.0),
        width=_optional_int(raw, "width", fail, minimum=1),
        height=_optional_int(raw, "height", fail, minimum=1),
        keyframes=_optional_keyframes(raw, fail),
        rotation=_optional_rotation(raw, fail),
        attributes=attributes,
        is_image=is_image,
    )


def _optional_number(raw, key, fail, minimum: float, strictly_above: bool = False) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    bound = f"> {minimum}" if strictly_above else f">= {minimum}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise fail(key, f"a number {bound} or null")
    if value < minimum or (strictly_above and value == minimum):
        raise fail(key, f"a number {bound} or null")
    return float(value)


def _optional_int(raw, key, fail, minimum: int) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise fail(key, f"an integer >= {minimum} or null")
    return value


def _optional_keyframes(raw, fail) -> tuple[int, ...] | None:
    value = raw.get("keyframes")
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in value)
        or value != sorted(set(value))
    ):
        raise fail("keyframes", "a non-empty increasing list of frame numbers >= 0, or null")
    return tuple(value)


def _optional_rotation(raw, fail) -> int | None:
    value = raw.get("rotation")
    if value is None:
        return None
    if isinstance(value, bool) or value not in (0, 90, 180, 270):
        raise fail("rotation", "one of 0, 90, 180, 270 (degrees counter-clockwise) or null")
    return value
