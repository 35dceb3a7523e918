"""Event-order and speed accuracy: right only when both events are named in order (or the speed named alone), and
scored by `evaluate` wherever a manifest's attributes state events."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from simvlg_video.data.manifest import ClipRecord
from simvlg_video.data_tools import event_text, events
from simvlg_video.data_tools.make_events import draw_clip
from simvlg_video.eval.event_accuracy import (
    Event,
    event_accuracy,
    events_in_order,
    objects_named,
    parse_clause,
    parse_speed,
)
from simvlg_video.eval.predict import score

MOVE_STOP = (Event("circle", "red", "left"), Event("circle", "red", "stop"))
TWO_SHAPES = (Event("circle", "red", "left"), Event("square", "blue", "up"))
COLOUR_MOVE = (Event("triangle", "green", "turn", "blue"), Event("triangle", "blue", "down"))


@pytest.mark.parametrize(
    ("caption", "events_", "right"),
    [
        ("a red circle moves to the left then stops", MOVE_STOP, True),
        ("a red circle stops then moves to the left", MOVE_STOP, False),  # the right events, the wrong order
        ("a red circle moves to the left", MOVE_STOP, False),  # one event missing
        ("a red circle moves to the left then stops then moves up", MOVE_STOP, False),
        ("a red circle moves to the left then right then stops", MOVE_STOP, False),
        ("a red circle moves to the left and right then stops", MOVE_STOP, False),  # hedging names two motions
        ("a red circle moves to the left then a blue square moves up", TWO_SHAPES, True),
        ("a blue square moves up then a red circle moves to the left", TWO_SHAPES, False),
        ("a red circle moves to the left then a blue circle moves up", TWO_SHAPES, False),  # the wrong second shape
        ("a green triangle turns blue then goes down", COLOUR_MOVE, True),
        ("a green triangle turns red then goes down", COLOUR_MOVE, False),
        ("a green triangle goes down then turns blue", COLOUR_MOVE, False),
        ("the green triangle becomes larger then goes down", COLOUR_MOVE, False),  # "becomes" without a colour: grow
    ],
)
def test_events_in_order(caption: str, events_: tuple[Event, ...], right: bool) -> None:
    assert events_in_order(caption, events_) is right


def test_clauses_and_speeds_parse_to_one_thing_or_nothing() -> None:
    assert parse_clause("the red circle becomes larger") == ("circle", "grow", None)
    assert parse_clause("turns blue") == (None, "turn", "blue")
    assert parse_clause("comes to rest") == (None, "stop", None)
    assert parse_clause("stays still")[1] == "still"
    assert parse_speed("a red circle slowly moves left") == "slow"
    assert parse_speed("a red circle quickly moves left") == "fast"
    assert parse_speed("a red circle moves left slowly and quickly") is None
    assert parse_speed("a red circle moves left") is None
    with pytest.raises(ValueError, match="turn"):
        Event("circle", "red", "turn")


def test_references_score_one_and_reversed_clips_captions_score_zero() -> None:
    clips = {
        f"c{i}": draw_clip(np.random.default_rng(i), kind, variant, 4.0)
        for i, (kind, variant) in enumerate(
            (kind, variant)
            for kind in ("move_stop", "two_shapes", "colour_move", "speed")
            for variant in events.VARIANTS[kind]
        )
    }
    attributes = {clip_id: clip.attributes() for clip_id, clip in clips.items()}
    right = {clip_id: event_text.event_captions(clip)[i % 4] for i, (clip_id, clip) in enumerate(clips.items())}
    backwards = {clip_id: event_text.event_captions(events.reverse(clip))[0] for clip_id, clip in clips.items()}
    perfect = event_accuracy(right, attributes)
    assert perfect == {
        "event_objects_acc": 1.0,
        "event_order_acc": 1.0,
        "event_order_acc_objects_right": 1.0,
        "event_order_acc/colour_move": 1.0,
        "event_order_acc/move_stop": 1.0,
        "event_order_acc/two_shapes": 1.0,
        "speed_acc": 1.0,
        "speed_motion_acc": 1.0,
    }
    reversed_ = event_accuracy(backwards, attributes)
    assert reversed_["event_order_acc"] == 0.0 and reversed_["speed_motion_acc"] == 0.0
    assert reversed_["event_objects_acc"] == 1.0 and reversed_["event_order_acc_objects_right"] == 0.0
    assert reversed_["speed_acc"] == 1.0  # played backwards, a slow clip is still slow
    missing = event_accuracy({}, attributes)
    assert missing["event_order_acc"] == 0.0 and missing["speed_acc"] == 0.0
    with pytest.raises(ValueError, match="without attributes"):
        event_accuracy({"other": "a red circle"}, attributes)


@pytest.mark.parametrize(
    ("caption", "events_", "named"),
    [
        ("a red circle moves to the left then stops", MOVE_STOP, True),
        ("a red circle stops then moves up", MOVE_STOP, True),  # objects right, events wrong: still named
        ("a red square moves to the left then stops", MOVE_STOP, False),
        ("a red circle moves to the left then a blue circle stops", MOVE_STOP, False),  # a colour too many
        ("a blue square moves up then a red circle moves to the left", TWO_SHAPES, True),
        ("a red circle moves to the left then a blue triangle moves up", TWO_SHAPES, False),
        ("a red circle moves to the left", TWO_SHAPES, False),  # one object missing
        ("a green triangle turns blue then goes down", COLOUR_MOVE, True),
        ("a green triangle goes down", COLOUR_MOVE, False),  # the colour it turns is an object's colour too
    ],
)
def test_objects_named_whatever_the_events(caption: str, events_: tuple[Event, ...], named: bool) -> None:
    assert objects_named(caption, events_) is named


def test_event_order_among_clips_whose_objects_are_named_right() -> None:
    """Four two-event clips: two with objects right (one in order, one reversed), two with a shape misnamed (one in
    order of actions): event order 1/4 overall, 1/2 among the clips whose objects are right."""
    attributes = {f"c{i}": {"kind": "move_stop", "events": [e.as_dict() for e in MOVE_STOP]} for i in range(4)}
    captions = {
        "c0": "a red circle moves to the left then stops",
        "c1": "a red circle stops then moves to the right",
        "c2": "a red square moves to the left then stops",
        "c3": "a red square stays still then moves up",
    }
    metrics = event_accuracy(captions, attributes)
    assert metrics["event_order_acc"] == 0.25 and metrics["event_objects_acc"] == 0.5
    assert metrics["event_order_acc_objects_right"] == 0.5
    assert "event_order_acc_objects_right" not in event_accuracy({}, attributes)  # no clip named right: no score


@pytest.mark.java  # score() runs the COCO scorer (METEOR)
def test_score_adds_event_metrics_for_event_sets_and_motion_metrics_for_long_clips() -> None:
    def record(clip_id: str, clip: events.EventClip) -> ClipRecord:
        return ClipRecord(
            clip_id=clip_id,
            video=f"{clip_id}.mp4",
            video_path=Path(f"/v/{clip_id}.mp4"),
            start=None,
            end=None,
            captions=tuple(event_text.event_captions(clip)),
            split="test",
            attributes=clip.attributes(),
        )

    short = [record(f"s{i}", draw_clip(np.random.default_rng(i), "move_stop", "move_first", 4.0)) for i in range(2)]
    short.append(record("fast", draw_clip(np.random.default_rng(5), "speed", "fast", 4.0)))
    metrics = score(short, {r.clip_id: r.captions[0] for r in short})
    assert metrics["event_order_acc"] == metrics["speed_acc"] == 1.0 and "motion_acc" not in metrics
    long = [record(f"l{i}", draw_clip(np.random.default_rng(i), "long", "window", 20.0)) for i in range(2)]
    metrics = score(long, {long[0].clip_id: long[0].captions[0], long[1].clip_id: "a red circle"})
    assert metrics["motion_acc"] == 0.5 and "event_order_acc" not in metrics
