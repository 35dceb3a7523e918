"""Accuracy of generated captions on the synthetic event set: were both events named, in order? Was the speed right?

The event set (`simvlg_video.data_tools.events`) writes its captions from the words below, and this module parses
captions back with the same words, as `shape_accuracy` does for the motion set. A two-event caption is two clauses
joined by "then"; each clause names one action: a motion of `shape_accuracy.MOTIONS`, "stop", or "turn" into a colour.
A clause naming two actions, or a caption with other than two clauses, parses to nothing and counts as wrong.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from simvlg_video.eval.shape_accuracy import COLOURS, MOTION_KEYWORDS, MOTIONS, SHAPE_WORDS, caption_words

THEN = "then"  # the word that joins two events in order
STOP = "stop"
TURN = "turn"
ACTIONS = (*MOTIONS, STOP, TURN)
STOP_KEYWORDS = ("stops", "stop", "rest")
TURN_KEYWORDS = ("turns", "changes", "becomes")  # a turn is one of these followed, later in the clause, by a colour
SPEEDS = ("slow", "fast")
SPEED_KEYWORDS = {"slow": ("slowly", "slow"), "fast": ("quickly", "fast")}


@dataclass(frozen=True)
class Event:
    """One thing that happens: `shape` does `action` (a motion, "stop", or "turn" into colour `to`). `colour` is the
    shape's colour when the event starts."""

    shape: str
    colour: str
    action: str
    to: str | None = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r}; expected one of {ACTIONS}")
        if (self.action == TURN) != (self.to in COLOURS):
            raise ValueError(f"a turn needs a target colour in {COLOURS} and other actions none, got {self!r}")

    def as_dict(self) -> dict[str, str]:
        """The manifest form (`attributes.events`)."""
        row = {"shape": self.shape, "colour": self.colour, "action": self.action}
        return row | ({"to": self.to} if self.to else {})


def parse_clause(clause: str) -> tuple[str | None, str | None, str | None]:
    """(shape or None, action or None, turn colour or None) of one clause; action None when it names none or
    several."""
    words = caption_words(clause)
    shapes = [shape for shape, forms in SHAPE_WORDS.items() if set(words) & set(forms)]
    actions, to = [], None
    for name, keywords in MOTION_KEYWORDS.items():
        if set(words) & set(keywords):
            actions.append(name)
    if set(words) & set(STOP_KEYWORDS):
        actions.append(STOP)
    turn_at = next((i for i, word in enumerate(words) if word in TURN_KEYWORDS), None)
    if turn_at is not None:
        colours = [word for word in words[turn_at + 1 :] if word in COLOURS]
        if colours:
            actions.append(TURN)
            to = colours[0] if len(set(colours)) == 1 else None
    return (
        shapes[0] if len(shapes) == 1 else None,
        actions[0] if len(actions) == 1 else None,
        to if actions == [TURN] else None,
    )


def clause_matches(clause: str, event: Event) -> bool:
    """The clause names the event's action (and its colour, for a turn), and no other shape than the event's."""
    shape, action, to = parse_clause(clause)
    return action == event.action and to == event.to and shape in (None, event.shape)


def events_in_order(caption: str, events: Sequence[Event]) -> bool:
    """The caption is as many clauses joined by "then" as there are events, each naming its event, in order."""
    words = caption_words(caption)
    clauses, current = [], []
    for word in words:
        if word == THEN:
            clauses.append(current)
            current = []
        else:
            current.append(word)
    clauses.append(current)
    return len(clauses) == len(events) and all(
        clause_matches(" ".join(clause), event) for clause, event in zip(clauses, events)
    )


def objects_named(caption: str, events: Sequence[Event]) -> bool:
    """The caption names the events' shapes and colours (a turn's colour included) and no other, whatever it says
    they do and in whichever order: the objects are right, so what is left to get wrong is time."""
    words = set(caption_words(caption))
    shapes = {shape for shape, forms in SHAPE_WORDS.items() if words & set(forms)}
    colours = {colour for colour in COLOURS if colour in words}
    wanted_colours = {event.colour for event in events} | {event.to for event in events if event.to}
    return shapes == {event.shape for event in events} and colours == wanted_colours


def parse_speed(caption: str) -> str | None:
    """The one speed class whose words appear in the caption; None when none or both do."""
    words = set(caption_words(caption))
    found = [speed for speed, keywords in SPEED_KEYWORDS.items() if words & set(keywords)]
    return found[0] if len(found) == 1 else None


def events_of(attributes: Mapping) -> list[Event]:
    """The events of a manifest line's attributes (`{"events": [{"shape", "colour", "action", "to"?}, ...]}`)."""
    return [Event(row["shape"], row["colour"], row["action"], row.get("to")) for row in attributes["events"]]


def event_accuracy(predictions: Mapping[str, str], attributes: Mapping[str, Mapping]) -> dict[str, float]:
    """Event-order and speed accuracy of `predictions` (clip_id -> caption); clips without a caption count as wrong.

    event_order_acc: over clips with two or more events (attribute "events"), the share whose caption names every
    event in the right order; also per clip kind (event_order_acc/<kind>) where the attributes give "kind".
    event_objects_acc: over the same clips, the share whose caption names their objects right (`objects_named`);
    event_order_acc_objects_right: event order over those clips only, time with the eyesight taken out.
    speed_acc: over clips with a "speed" attribute, the share whose caption names that speed (and no other);
    speed_motion_acc: the same clips, speed and motion (attribute "motion") both right. A metric is absent when no
    clip calls for it.
    """
    unknown = sorted(set(predictions) - set(attributes))
    if unknown:
        raise ValueError(f"{len(unknown)} predictions name clips without attributes, e.g. {unknown[:5]}")
    hits: dict[str, list[bool]] = {}
    for clip_id, attrs in attributes.items():
        caption = predictions.get(clip_id)
        if len(attrs.get("events", ())) >= 2:
            clip_events = events_of(attrs)
            right = caption is not None and events_in_order(caption, clip_events)
            named = caption is not None and objects_named(caption, clip_events)
            hits.setdefault("event_order_acc", []).append(right)
            hits.setdefault("event_objects_acc", []).append(named)
            if named:
                hits.setdefault("event_order_acc_objects_right", []).append(right)
            if "kind" in attrs:
                hits.setdefault(f"event_order_acc/{attrs['kind']}", []).append(right)
        if "speed" in attrs:
            if attrs["speed"] not in SPEEDS:
                raise ValueError(f"clip {clip_id!r}: speed is {attrs['speed']!r}, expected one of {SPEEDS}")
            speed_right = caption is not None and parse_speed(caption) == attrs["speed"]
            hits.setdefault("speed_acc", []).append(speed_right)
            motion_right = caption is not None and parse_clause(caption)[1] == attrs.get("motion")
            hits.setdefault("speed_motion_acc", []).append(speed_right and motion_right)
    return {name: sum(values) / len(values) for name, values in sorted(hits.items())}
