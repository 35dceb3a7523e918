"""The event set's caption text: four paraphrases of any events (and speed), and the corpus of every caption the
event kinds can produce, which the bundled tiny LM learns (`build_tiny_image_model`) so that it can say them."""

from __future__ import annotations

from itertools import product

from simvlg_video.data_tools import shapes
from simvlg_video.data_tools.events import LINE_MOTIONS, EventClip
from simvlg_video.data_tools.shapes import VIDEO_TEMPLATES, image_captions, noun_phrases, video_captions
from simvlg_video.eval.event_accuracy import SPEED_KEYWORDS, SPEEDS, STOP, THEN, TURN, Event
from simvlg_video.eval.shape_accuracy import COLOURS, DIRECTIONAL_MOTIONS, SHAPES

_STOP_TEMPLATES = ("stops", "stops moving", "comes to a stop", "comes to rest")
_TURN_TEMPLATES = ("turns {c}", "changes to {c}", "becomes {c}", "changes colour to {c}")
_SUBJECTS = ("{a}", "{a}", "{the}", "{a}")  # the subject of a clause that has no motion template


def _clause(event: Event, paraphrase: int) -> tuple[str, str]:
    """(subject, predicate) of one event's clause, the subject a template of "{a}"/"{the}"."""
    if event.action == STOP:
        return _SUBJECTS[paraphrase], _STOP_TEMPLATES[paraphrase]
    if event.action == TURN:
        return _SUBJECTS[paraphrase], _TURN_TEMPLATES[paraphrase].format(c=event.to)
    subject, predicate = VIDEO_TEMPLATES[event.action][paraphrase].split(" ", 1)
    return subject, predicate


def event_captions(clip: EventClip) -> list[str]:
    """The clip's four paraphrases (`captions_for` its events and speed)."""
    return captions_for(clip.events, clip.speed)


def captions_for(events: tuple[Event, ...], speed: str | None = None) -> list[str]:
    """Four paraphrases: events as "<first> then <second>" (the subject named again only when it changes), a speed
    clip's motion with its adverb, a single motion as the motion set captions it."""
    if len(events) == 1 and speed is None:
        return video_captions(events[0].shape, events[0].colour, events[0].action)
    captions = []
    for paraphrase in range(4):
        parts = []
        for index, event in enumerate(events):
            subject, predicate = _clause(event, paraphrase)
            same_actor = index > 0 and event.shape == events[index - 1].shape
            named = "" if same_actor else subject.format(**noun_phrases(event.shape, event.colour)) + " "
            if speed is not None:
                adverb = SPEED_KEYWORDS[speed][0]
                predicate = f"{adverb} {predicate}" if paraphrase % 2 == 0 else f"{predicate} {adverb}"
            parts.append(named + predicate)
        captions.append(f" {THEN} ".join(parts))
    return captions


def _every_caption_content() -> list[tuple[tuple[Event, ...], str | None]]:
    """(events, speed) of every distinct caption content the event kinds can produce, in a fixed order."""
    contents: list[tuple[tuple[Event, ...], str | None]] = []
    for shape, colour in product(SHAPES, COLOURS):
        for motion in DIRECTIONAL_MOTIONS:
            contents.append(((Event(shape, colour, motion), Event(shape, colour, STOP)), None))
            contents.append(((Event(shape, colour, "still"), Event(shape, colour, motion)), None))
            for other in (c for c in COLOURS if c != colour):
                contents.append(((Event(shape, colour, TURN, other), Event(shape, other, motion)), None))
                contents.append(((Event(shape, colour, motion), Event(shape, colour, TURN, other)), None))
        for motion, speed in product(LINE_MOTIONS, SPEEDS):
            contents.append(((Event(shape, colour, motion),), speed))
        for second in product(SHAPES, COLOURS):
            if second[0] == shape or second[1] == colour:
                continue
            for pair in (("left", "right"), ("up", "down")):
                for first_motion, second_motion in product(pair, pair):
                    contents.append(((Event(shape, colour, first_motion), Event(*second, second_motion)), None))
    return contents


def caption_groups() -> list[list[str]]:
    """The motion set's caption groups (`shapes.caption_groups`: long clips are captioned with them) and one group
    per event caption content: the first shape's image captions and the content's four paraphrases. For training a
    tiny LM that knows the event words ("then", "stops", "slowly", ...), as `shapes.caption_groups` is for the
    motion set."""
    return shapes.caption_groups() + [
        image_captions(events[0].shape, events[0].colour) + captions_for(events, speed)
        for events, speed in _every_caption_content()
    ]


def caption_corpus() -> list[str]:
    """Every caption of `caption_groups` once, in a fixed order."""
    return list(dict.fromkeys(caption for group in caption_groups() for caption in group))
