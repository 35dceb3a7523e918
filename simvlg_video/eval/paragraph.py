"""Paragraph captioning scores (ActivityNet Captions): a video's segment captions, in time order, as one paragraph.

Driven by the manifest alone: records whose ``attributes`` carry ``video_id`` and ``reference_set`` are event
segments of that video as annotated in that reference set (ActivityNet's val_1 and val_2 annotate the same videos
with different segments). For each video:

* one reference paragraph per reference set: that set's segment captions in time order, joined with spaces;
* the predicted paragraph: the generated captions of the segments of the video's first reference set (in name
  order: val_1, the usual ground-truth proposals), in time order, joined the same way.

The predicted paragraphs are then scored against all reference paragraphs with the COCO caption scorer. A video
whose proposal segments were not all captioned (a decode failure) is left out and counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from simvlg_video.data.manifest import ClipRecord
from simvlg_video.eval.coco import score_captions

PARAGRAPH_ATTRIBUTES = ("video_id", "reference_set")
PREFIX = "paragraph/"


@dataclass
class Paragraphs:
    """Reference paragraphs and predicted paragraphs per video id, and the videos that could not be predicted."""

    references: dict[str, list[str]]
    predictions: dict[str, str]
    incomplete: list[str]


def is_paragraph_set(records: Iterable[ClipRecord]) -> bool:
    """True when every record is a segment of a video in a reference set (and there is at least one record)."""
    records = list(records)
    return bool(records) and all(all(key in r.attributes for key in PARAGRAPH_ATTRIBUTES) for r in records)


def build_paragraphs(records: Iterable[ClipRecord], captions: Mapping[str, str]) -> Paragraphs:
    """Reference and predicted paragraphs of every video in ``records`` (see the module docstring)."""
    segments: dict[str, dict[str, list[ClipRecord]]] = {}
    for record in records:
        missing = [key for key in PARAGRAPH_ATTRIBUTES if key not in record.attributes]
        if missing:
            raise ValueError(f"clip {record.clip_id!r}: paragraph evaluation needs attribute {missing[0]!r}")
        if len(record.captions) != 1:
            raise ValueError(
                f"clip {record.clip_id!r}: a segment needs exactly one reference caption to form a "
                f"reference paragraph, got {len(record.captions)}"
            )
        video, reference_set = (str(record.attributes[key]) for key in PARAGRAPH_ATTRIBUTES)
        segments.setdefault(video, {}).setdefault(reference_set, []).append(record)
    result = Paragraphs({}, {}, [])
    for video, sets in segments.items():
        ordered = {name: sorted(sets[name], key=_time_order) for name in sorted(sets)}
        result.references[video] = [" ".join(r.captions[0] for r in clips) for clips in ordered.values()]
        proposals = next(iter(ordered.values()))
        if all(r.clip_id in captions for r in proposals):
            result.predictions[video] = " ".join(captions[r.clip_id].strip() for r in proposals)
        else:
            result.incomplete.append(video)
    return result


def paragraph_scores(
    records: Iterable[ClipRecord], captions: Mapping[str, str], spice: bool = False
) -> dict[str, float]:
    """COCO metrics of the predicted paragraphs, keys prefixed "paragraph/", plus the number of videos scored
    ("paragraph/videos") and left out for missing segment captions ("paragraph/videos_incomplete")."""
    paragraphs = build_paragraphs(records, captions)
    if not paragraphs.predictions:
        raise ValueError(f"no video has all its proposal segments captioned ({len(paragraphs.incomplete)} videos)")
    references = {video: paragraphs.references[video] for video in paragraphs.predictions}
    metrics = score_captions(references, paragraphs.predictions, spice=spice)
    scores: dict[str, float] = {PREFIX + name: value for name, value in metrics.items()}
    scores[PREFIX + "videos"] = len(paragraphs.predictions)
    scores[PREFIX + "videos_incomplete"] = len(paragraphs.incomplete)
    return scores


def _time_order(record: ClipRecord) -> tuple[float, float]:
    """Start, then end; segments that tie keep their manifest order (the sort is stable)."""
    return (record.start or 0.0, record.end if record.end is not None else float("inf"))
