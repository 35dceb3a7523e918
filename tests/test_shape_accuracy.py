"""Caption parsing and the motion/object/direction accuracies on hand-written predictions, and as runs report them."""

import math
from pathlib import Path

import pytest

from simvlg_video.data.manifest import ClipRecord
from simvlg_video.eval.predict import score
from simvlg_video.eval.shape_accuracy import parse_motion, parse_object, shape_accuracy, still_accuracy


@pytest.mark.parametrize(
    ("caption", "motion"),
    [
        ("a red circle moves to the left", "left"),
        ("A Red Circle slides LEFT.", "left"),
        ("the square is moving rightwards", "right"),
        ("a blue triangle rising", "up"),
        ("a green square falls down", "down"),
        ("the circle gets bigger", "grow"),
        ("a yellow square contracts", "shrink"),
        ("a red circle stays still", "still"),
        ("a red circle", None),
        ("a red circle moves left and then right", None),  # hedging names two motions
        ("the circle grows and goes up", None),
        ("", None),
        ("a red circle moves leftish", None),  # whole words only
    ],
)
def test_parse_motion(caption, motion):
    assert parse_motion(caption) == motion


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        ("a red circle moves left", ("circle", "red")),
        ("Two Yellow Triangles grow", ("triangle", "yellow")),
        ("a blue square next to a circle", (None, "blue")),
        ("a red and green square", ("square", None)),
        ("something moves up", (None, None)),
        ("a reddish circle", ("circle", None)),
    ],
)
def test_parse_object(caption, expected):
    assert parse_object(caption) == expected


ATTRIBUTES = {
    "a": {"shape": "circle", "colour": "red", "motion": "left"},
    "b": {"shape": "square", "colour": "blue", "motion": "grow"},
    "c": {"shape": "triangle", "colour": "green", "motion": "still"},
    "d": {"shape": "circle", "colour": "yellow", "motion": "up"},
    "e": {"shape": "square", "colour": "red", "motion": "right"},
}


def test_accuracies_on_hand_written_predictions():
    predictions = {
        "a": "a red circle moves to the left",  # motion right, object right
        "b": "a blue square shrinks",  # motion wrong (the opposite), object right
        "c": "a green triangle stays still",  # both right, not directional
        "d": "a yellow square rises",  # motion right, shape wrong
        # "e" has no prediction: wrong on every count
    }
    metrics = shape_accuracy(predictions, ATTRIBUTES)
    assert metrics == pytest.approx({"motion_acc": 3 / 5, "object_acc": 3 / 5, "direction_acc": 2 / 4})


def test_still_accuracies_on_hand_written_captions():
    stills = {clip: {"shape": attrs["shape"], "colour": attrs["colour"]} for clip, attrs in ATTRIBUTES.items()}
    captions = {
        "a": "a red circle",  # both right
        "b": "a blue circle",  # colour right, shape wrong
        "c": "a green triangle beside a red one",  # shape right, two colours: ambiguous, so wrong
        "d": "a yellow circle on a grey floor",  # both right (grey is no shape colour)
        # "e" has no caption: wrong on every count
    }
    assert still_accuracy(captions, stills) == {"shape_acc": 3 / 5, "colour_acc": 3 / 5, "object_acc": 2 / 5}


@pytest.mark.java  # score() runs the COCO scorer (METEOR)
def test_score_reports_the_accuracies_of_the_captions_it_scores():
    """What adapt, pretrain and evaluate report: motion accuracy for clips that state a motion, object accuracy for
    stills, exact on constructed captions."""

    def records(is_image: bool) -> list[ClipRecord]:
        return [
            ClipRecord(
                clip,
                f"{clip}.png" if is_image else f"{clip}.mp4",
                Path(f"/v/{clip}"),
                None,
                None,
                ("a red circle",),
                "test",
                attributes={"shape": a["shape"], "colour": a["colour"]} if is_image else a,
                is_image=is_image,
            )
            for clip, a in ATTRIBUTES.items()
        ]

    clips = {
        "a": "a red circle moves to the left",  # motion right, object right
        "b": "a blue square shrinks",  # motion wrong, object right
        "c": "a green triangle stays still",  # both right, not directional
        "d": "a yellow square rises",  # motion right, shape wrong
        "e": "a red square moves up",  # motion wrong, object right
    }
    metrics = score(records(is_image=False), clips)
    assert (metrics["motion_acc"], metrics["object_acc"], metrics["direction_acc"]) == (3 / 5, 4 / 5, 2 / 4)
    stills = {"a": "a red circle", "b": "a blue circle", "c": "a green and red triangle", "d": "a yellow circle"}
    metrics = score(records(is_image=True), {**stills, "e": "a red square"})
    assert (metrics["shape_acc"], metrics["colour_acc"], metrics["object_acc"]) == (4 / 5, 4 / 5, 3 / 5)
    assert "motion_acc" not in metrics and metrics["clips"] == 5


def test_perfect_and_empty_predictions():
    perfect = {
        "a": "a red circle slides left",
        "b": "a blue square gets bigger",
        "c": "the green triangle is motionless",
        "d": "a yellow circle goes up",
        "e": "a red square travels rightward",
    }
    assert shape_accuracy(perfect, ATTRIBUTES) == {"motion_acc": 1.0, "object_acc": 1.0, "direction_acc": 1.0}
    assert shape_accuracy({}, ATTRIBUTES) == {"motion_acc": 0.0, "object_acc": 0.0, "direction_acc": 0.0}


def test_direction_accuracy_is_nan_without_directional_clips():
    metrics = shape_accuracy({"c": "a green triangle stays still"}, {"c": ATTRIBUTES["c"]})
    assert metrics["motion_acc"] == 1.0 and math.isnan(metrics["direction_acc"])


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="zzz"):
        shape_accuracy({"zzz": "a red circle"}, ATTRIBUTES)
    with pytest.raises(ValueError, match="empty"):
        shape_accuracy({}, {})
    with pytest.raises(ValueError, match=r"'q'.*motion.*'spin'"):
        shape_accuracy({}, {"q": {"shape": "circle", "colour": "red", "motion": "spin"}})
