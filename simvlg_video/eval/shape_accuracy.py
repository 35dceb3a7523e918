"""Accuracy of generated captions on the synthetic motion set: did the model name the right motion and object?

Captions are parsed with the keyword tables below, the same tables the synthetic set's captions are written from
(`simvlg_video.data_tools.shapes`). A caption that names several motions (or shapes, or colours) parses to
None and counts as wrong: hedging between "left" and "right" is not knowing the direction.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow")
MOTIONS = ("still", "left", "right", "up", "down", "grow", "shrink")
DIRECTIONAL_MOTIONS = ("left", "right", "up", "down", "grow", "shrink")

# The words that signal each motion: the single source for the synthetic set's captions (data_tools.shapes writes
# them from these words) and for parsing captions back. Every caption template contains keywords of one motion.
MOTION_KEYWORDS = {
    "still": ("still", "motionless", "stationary"),
    "left": ("left", "leftward", "leftwards"),
    "right": ("right", "rightward", "rightwards"),
    "up": ("up", "upward", "upwards", "rise", "rises", "rising"),
    "down": ("down", "downward", "downwards", "fall", "falls", "falling"),
    "grow": ("grow", "grows", "growing", "bigger", "larger", "expand", "expands", "expanding"),
    "shrink": ("shrink", "shrinks", "shrinking", "smaller", "contract", "contracts", "contracting"),
}
SHAPE_WORDS = {shape: (shape, shape + "s") for shape in SHAPES}
COLOUR_WORDS = {colour: (colour,) for colour in COLOURS}


def caption_words(caption: str) -> list[str]:
    """Lowercase words of a caption, punctuation dropped: the unit the keyword tables match."""
    return re.findall(r"[a-z]+", caption.lower())


def _single_match(words: set[str], table: Mapping[str, tuple[str, ...]]) -> str | None:
    found = [name for name, keywords in table.items() if words.intersection(keywords)]
    return found[0] if len(found) == 1 else None


def parse_motion(caption: str) -> str | None:
    """The one motion whose keywords appear in the caption; None when no motion or several do."""
    return _single_match(set(caption_words(caption)), MOTION_KEYWORDS)


def parse_object(caption: str) -> tuple[str | None, str | None]:
    """(shape, colour) named by the caption; each None when absent or ambiguous."""
    words = set(caption_words(caption))
    return _single_match(words, SHAPE_WORDS), _single_match(words, COLOUR_WORDS)


def _check_attributes(clip_id: str, attrs: Mapping[str, str]) -> None:
    for key, allowed in (("shape", SHAPES), ("colour", COLOURS), ("motion", MOTIONS)):
        if attrs.get(key) not in allowed:
            raise ValueError(f"clip {clip_id!r}: attribute {key!r} is {attrs.get(key)!r}, expected one of {allowed}")


def still_accuracy(predictions: Mapping[str, str], attributes: Mapping[str, Mapping[str, str]]) -> dict[str, float]:
    """Shape, colour and object (both right) accuracy of still-image captions (`attributes`: {"shape", "colour"}
    per image); images without a prediction count as wrong."""
    if not attributes:
        raise ValueError("attributes is empty: nothing to evaluate")
    hits = {"shape_acc": 0, "colour_acc": 0, "object_acc": 0}
    for clip_id, attrs in attributes.items():
        _check_attributes(clip_id, {"motion": "still", **attrs})
        shape, colour = parse_object(predictions[clip_id]) if clip_id in predictions else (None, None)
        hits["shape_acc"] += shape == attrs["shape"]
        hits["colour_acc"] += colour == attrs["colour"]
        hits["object_acc"] += (shape, colour) == (attrs["shape"], attrs["colour"])
    return {name: count / len(attributes) for name, count in hits.items()}


def shape_accuracy(predictions: Mapping[str, str], attributes: Mapping[str, Mapping[str, str]]) -> dict[str, float]:
    """Motion, object and direction accuracy of `predictions` (clip_id -> caption) against the true attributes.

    `attributes` maps every evaluated clip_id to {"shape", "colour", "motion"} (the manifest's "attributes").
    Clips without a prediction count as wrong. direction_acc is motion accuracy over the clips whose true
    motion is directional (not "still"); it is NaN when there are none.
    """
    if not attributes:
        raise ValueError("attributes is empty: nothing to evaluate")
    unknown = sorted(set(predictions) - set(attributes))
    if unknown:
        raise ValueError(f"{len(unknown)} predictions name clips without attributes, e.g. {unknown[:5]}")
    motion_hits = object_hits = direction_hits = num_directional = 0
    for clip_id, attrs in attributes.items():
        _check_attributes(clip_id, attrs)
        caption = predictions.get(clip_id)
        motion_right = caption is not None and parse_motion(caption) == attrs["motion"]
        object_right = caption is not None and parse_object(caption) == (attrs["shape"], attrs["colour"])
        motion_hits += motion_right
        object_hits += object_right
        if attrs["motion"] in DIRECTIONAL_MOTIONS:
            num_directional += 1
            direction_hits += motion_right
    return {
        "motion_acc": motion_hits / len(attributes),
        "object_acc": object_hits / len(attributes),
        "direction_acc": direction_hits / num_directional if num_directional else float("nan"),
    }
