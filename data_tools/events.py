"""Synthetic event clips: time beyond direction (pure functions, no file I/O).

Clips of the shapes world (`data_tools.shapes`) in which what matters is *when* things happen:

* `move_stop`: a shape moves then stops, or stays still then moves;
* `two_shapes`: one shape moves, then another does;
* `colour_move`: a shape changes colour then moves, or moves then changes colour;
* `speed`: a shape moves slowly or quickly the whole clip;
* `long`: a long clip, still except for one short window in which the shape moves.

Every two-event clip's time reversal is another clip of its kind with the events swapped (and each motion reversed),
captioned differently, so a model blind to frame order sits at chance on event order. A clip is a set of actors,
each a shape whose place, size and colour move linearly between poses at fractions of the clip's duration.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from simvlg_video.data_tools.shapes import (
    COLOUR_RGB,
    MARGIN_SCALE,
    background,
    shape_coverage,
)
from simvlg_video.eval.event_accuracy import SPEEDS, STOP, TURN, Event
from simvlg_video.eval.shape_accuracy import COLOURS, SHAPES

KINDS = ("move_stop", "two_shapes", "colour_move", "speed", "long")
VARIANTS = {  # what a kind's clips differ in, each equally often in a set
    "move_stop": ("move_first", "still_first"),
    "two_shapes": ("rows", "columns"),  # the two shapes in the top and bottom halves (moving sideways), or side by side
    "colour_move": ("colour_first", "move_first"),
    "speed": SPEEDS,
    "long": ("window",),
}
LINE_MOTIONS = ("left", "right", "up", "down")
OPPOSITE = {
    "left": "right",
    "right": "left",
    "up": "down",
    "down": "up",
    "grow": "shrink",
    "shrink": "grow",
    "still": "still",
}
# Speeds as fractions of the frame's side per second: at most 0.055 against at least 0.10, so fast is >= 1.8x slow.
SPEED_RANGES = {"slow": (0.04, 0.055), "fast": (0.10, 0.12)}
BOUNDARY = (0.4, 0.6)  # where the first of two events ends, as a fraction of the clip
WINDOW_FRACTION = 0.1  # the share of a long clip its one event fills
# Shape sizes (half-extents as fractions of the frame's side, as in `shapes`): no smaller than the bundled image model
# names as well as it names stills (docs/experiments.md: smaller shapes were misnamed, and event order measured
# eyesight); at most what two shapes in the two halves of the frame allow.
SHAPE_SIZE = (0.13, 0.16)
GROWN_SIZE_RATIO = (1.6, 1.95)  # large/small of grow and shrink, whose small end is a SHAPE_SIZE
_TRAVEL = (0.40, 0.55)


@dataclass(frozen=True)
class Pose:
    """Where an actor is at `time` (a fraction of the clip): centre and size as in `shapes.ClipSpec`, its colour."""

    time: float
    x: float
    y: float
    size: float
    colour: str


@dataclass(frozen=True)
class Actor:
    """One shape; between two poses it moves, resizes and changes colour linearly."""

    shape: str
    poses: tuple[Pose, ...]

    def __post_init__(self) -> None:
        times = [pose.time for pose in self.poses]
        if self.shape not in SHAPES or not times or times[0] != 0.0 or times[-1] != 1.0 or times != sorted(times):
            raise ValueError(f"an actor needs a known shape and poses from time 0 to 1 in order, got {self!r}")

    def state(self, time: float) -> tuple[float, float, float, np.ndarray]:
        """(x, y, size, RGB float32) at `time` in [0, 1]."""
        for before, after in zip(self.poses, self.poses[1:]):
            if time <= after.time:
                span = after.time - before.time
                w = min(max((time - before.time) / span, 0.0), 1.0) if span > 0 else 1.0
                rgb = (1 - w) * np.asarray(COLOUR_RGB[before.colour], np.float32) + w * np.asarray(
                    COLOUR_RGB[after.colour], np.float32
                )
                return (
                    before.x + w * (after.x - before.x),
                    before.y + w * (after.y - before.y),
                    before.size + w * (after.size - before.size),
                    rgb,
                )
        last = self.poses[-1]
        return last.x, last.y, last.size, np.asarray(COLOUR_RGB[last.colour], np.float32)


@dataclass(frozen=True)
class EventClip:
    """Everything needed to render and caption one clip. `window`: when its event happens, as fractions of the clip
    (long clips); `speed`: slow or fast (speed clips); `speed_value`: frame sides per second."""

    kind: str
    variant: str
    actors: tuple[Actor, ...]
    events: tuple[Event, ...]
    duration: float  # seconds
    seed: int  # background pattern and per-frame noise
    speed: str | None = None
    speed_value: float | None = None
    window: tuple[float, float] | None = None

    def attributes(self) -> dict:
        """The manifest's `attributes` of this clip: what its captions state, for scoring."""
        first = self.events[0]
        row: dict = {
            "kind": self.kind,
            "variant": self.variant,
            "shape": first.shape,
            "colour": first.colour,
            "events": [event.as_dict() for event in self.events],
        }
        if len(self.events) == 1:
            row["motion"] = first.action
        if self.speed is not None:
            row["speed"] = self.speed
        if self.window is not None:
            row["window"] = [self.window[0] * self.duration, self.window[1] * self.duration]
        return row


def _still(time: float, x: float, y: float, size: float, colour: str) -> Pose:
    return Pose(time, x, y, size, colour)


def _ends(rng: np.random.Generator, motion: str) -> tuple[tuple, tuple]:
    """(x, y, size) at the start and the end of a full-frame motion (a line, or growing or shrinking in place)."""
    if motion in ("grow", "shrink"):
        small = rng.uniform(SHAPE_SIZE[0], (SHAPE_SIZE[0] + SHAPE_SIZE[1]) / 2)
        large = small * rng.uniform(*GROWN_SIZE_RATIO)
        margin = MARGIN_SCALE * large
        x, y = rng.uniform(margin, 1.0 - margin, size=2)
        sizes = (small, large) if motion == "grow" else (large, small)
        return (x, y, sizes[0]), (x, y, sizes[1])
    size = rng.uniform(*SHAPE_SIZE)
    travel = rng.uniform(_TRAVEL[0], min(_TRAVEL[1], 1.0 - 2 * MARGIN_SCALE * size))
    (x0, y0), (x1, y1) = line_path(rng, motion, size, travel)
    return (x0, y0, size), (x1, y1, size)


def line_path(
    rng: np.random.Generator,
    motion: str,
    size: float,
    travel: float,
    region: tuple[float, float, float, float] = (0.0, 1.0, 0.0, 1.0),
) -> tuple[tuple, tuple]:
    """(x, y) at the start and the end of a straight move of `travel` (a fraction of the frame) inside `region`
    (x from, x to, y from, y to), keeping the whole shape inside it."""
    if motion not in LINE_MOTIONS:
        raise ValueError(f"a line path needs one of {LINE_MOTIONS}, got {motion!r}")
    margin = MARGIN_SCALE * size
    horizontal = motion in ("left", "right")
    low, high = region[:2] if horizontal else region[2:]
    cross_low, cross_high = region[2:] if horizontal else region[:2]
    if high - low - 2 * margin < travel:
        raise ValueError(
            f"a travel of {travel:.3f} does not fit a region {high - low:.3f} wide with shapes of size "
            f"{size:.3f} (shorter clips or slower speeds)"
        )
    start = rng.uniform(low + margin, high - margin - travel)
    sign = 1.0 if motion in ("right", "down") else -1.0
    start += travel if sign < 0 else 0.0
    cross = rng.uniform(cross_low + margin, cross_high - margin)
    end = start + sign * travel
    return ((start, cross), (end, cross)) if horizontal else ((cross, start), (cross, end))


def move_stop_clip(
    rng: np.random.Generator, shape: str, colour: str, motion: str, variant: str, duration: float
) -> EventClip:
    """Moves then stops (`move_first`), or stays still then moves (`still_first`)."""
    (x0, y0, s0), (x1, y1, s1) = _ends(rng, motion)
    boundary = rng.uniform(*BOUNDARY)
    held = (x1, y1, s1) if variant == "move_first" else (x0, y0, s0)
    poses = (_still(0.0, x0, y0, s0, colour), _still(boundary, *held, colour), _still(1.0, x1, y1, s1, colour))
    moving, resting = Event(shape, colour, motion), Event(shape, colour, STOP if variant == "move_first" else "still")
    events = (moving, resting) if variant == "move_first" else (resting, moving)
    return EventClip("move_stop", variant, (Actor(shape, poses),), events, duration, _seed(rng))


def colour_move_clip(
    rng: np.random.Generator, shape: str, colour: str, motion: str, variant: str, duration: float
) -> EventClip:
    """Turns another colour then moves (`colour_first`), or moves then turns (`move_first`)."""
    (x0, y0, s0), (x1, y1, s1) = _ends(rng, motion)
    other = [c for c in COLOURS if c != colour][int(rng.integers(len(COLOURS) - 1))]
    boundary = rng.uniform(*BOUNDARY)
    if variant == "colour_first":
        middle = _still(boundary, x0, y0, s0, other)
        events = (Event(shape, colour, TURN, other), Event(shape, other, motion))
    else:
        middle = _still(boundary, x1, y1, s1, colour)
        events = (Event(shape, colour, motion), Event(shape, colour, TURN, other))
    poses = (_still(0.0, x0, y0, s0, colour), middle, _still(1.0, x1, y1, s1, other))
    return EventClip("colour_move", variant, (Actor(shape, poses),), events, duration, _seed(rng))


def two_shapes_clip(
    rng: np.random.Generator, first: tuple[str, str], second: tuple[str, str], variant: str, duration: float
) -> EventClip:
    """`first` (shape, colour) moves, then `second` does; each in its own half of the frame (`rows`: top and bottom,
    moving sideways; `columns`: left and right, moving up or down)."""
    if first[0] == second[0] or first[1] == second[1]:
        raise ValueError(f"the two shapes must differ in shape and in colour, got {first} and {second}")
    motions = ("left", "right") if variant == "rows" else ("up", "down")
    halves = (
        [(0.0, 1.0, 0.0, 0.5), (0.0, 1.0, 0.5, 1.0)]
        if variant == "rows"
        else [(0.0, 0.5, 0.0, 1.0), (0.5, 1.0, 0.0, 1.0)]
    )
    order = rng.permutation(2)
    boundary = rng.uniform(*BOUNDARY)
    actors, events = [], []
    for index, (shape, colour) in enumerate((first, second)):
        motion = motions[int(rng.integers(2))]
        size = rng.uniform(*SHAPE_SIZE)
        free = 1.0 - 2 * MARGIN_SCALE * size
        (x0, y0), (x1, y1) = line_path(
            rng, motion, size, rng.uniform(_TRAVEL[0], min(_TRAVEL[1], free)), halves[order[index]]
        )
        held = (x1, y1) if index == 0 else (x0, y0)
        actors.append(
            Actor(
                shape,
                (
                    _still(0.0, x0, y0, size, colour),
                    _still(boundary, *held, size, colour),
                    _still(1.0, x1, y1, size, colour),
                ),
            )
        )
        events.append(Event(shape, colour, motion))
    return EventClip("two_shapes", variant, tuple(actors), tuple(events), duration, _seed(rng))


def speed_clip(
    rng: np.random.Generator, shape: str, colour: str, motion: str, speed: str, duration: float
) -> EventClip:
    """Moves in a straight line the whole clip at a slow or fast speed (fractions of the frame per second)."""
    size = rng.uniform(*SHAPE_SIZE)
    value = rng.uniform(*SPEED_RANGES[speed])
    (x0, y0), (x1, y1) = line_path(rng, motion, size, value * duration)
    poses = (_still(0.0, x0, y0, size, colour), _still(1.0, x1, y1, size, colour))
    return EventClip(
        "speed",
        speed,
        (Actor(shape, poses),),
        (Event(shape, colour, motion),),
        duration,
        _seed(rng),
        speed=speed,
        speed_value=float(value),
    )


def long_clip(
    rng: np.random.Generator,
    shape: str,
    colour: str,
    motion: str,
    duration: float,
    window_fraction: float = WINDOW_FRACTION,
) -> EventClip:
    """Still, except for one window of `window_fraction` of the clip, anywhere inside it, in which it moves."""
    if not 0.0 < window_fraction <= 1.0:
        raise ValueError(f"window_fraction must be in (0, 1], got {window_fraction}")
    (x0, y0, s0), (x1, y1, s1) = _ends(rng, motion)
    start = rng.uniform(0.0, 1.0 - window_fraction)
    end = min(start + window_fraction, 1.0)
    poses = (
        _still(0.0, x0, y0, s0, colour),
        _still(start, x0, y0, s0, colour),
        _still(end, x1, y1, s1, colour),
        _still(1.0, x1, y1, s1, colour),
    )
    return EventClip(
        "long",
        "window",
        (Actor(shape, poses),),
        (Event(shape, colour, motion),),
        duration,
        _seed(rng),
        window=(float(start), float(end)),
    )


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


def reverse(clip: EventClip) -> EventClip:
    """The clip played backwards, with the events it then shows (in reverse order, each motion reversed)."""
    actors = tuple(Actor(a.shape, tuple(replace(p, time=1.0 - p.time) for p in reversed(a.poses))) for a in clip.actors)
    events = []
    for event in reversed(clip.events):
        if event.action == TURN:
            events.append(Event(event.shape, event.to, TURN, event.colour))
        elif event.action == STOP:
            events.append(Event(event.shape, event.colour, "still"))
        elif event.action == "still" and clip.kind == "move_stop":
            events.append(Event(event.shape, event.colour, STOP))
        else:
            events.append(Event(event.shape, event.colour, OPPOSITE[event.action]))
    turn = next((event for event in events if event.action == TURN), None)
    if turn is not None:  # the other event starts in the colour the turn leaves, or the one it starts from
        moved_colour = turn.to if events[0] is turn else turn.colour
        events = [event if event is turn else replace(event, colour=moved_colour) for event in events]
    variants = VARIANTS[clip.kind]
    variant = variants[1 - variants.index(clip.variant)] if clip.kind in ("move_stop", "colour_move") else clip.variant
    window = None if clip.window is None else (1.0 - clip.window[1], 1.0 - clip.window[0])
    return replace(clip, variant=variant, actors=actors, events=tuple(events), window=window)


def render_event_frames(clip: EventClip, height: int, width: int, fps: float) -> np.ndarray:
    """uint8 RGB frames (round(fps * duration), H, W, 3); frame k shows the clip at k / fps seconds."""
    num_frames = _frame_count(clip, height, width, fps)
    base = background(clip.seed, height, width)
    return np.stack([_render(clip, clip.actors, base, index, fps) for index in range(num_frames)])


def object_stills(clip: EventClip, height: int, width: int, fps: float) -> list[tuple[np.ndarray, str, str]]:
    """(uint8 RGB frame, shape, colour) of each of the clip's shapes alone on the clip's background, at its first and
    its last frame: the clip's objects as stills, to measure whether an image model names them (a clip of one shape
    gives exactly its own first and last frame; the colour is that of the pose the frame is nearest to)."""
    num_frames = _frame_count(clip, height, width, fps)
    base = background(clip.seed, height, width)
    stills = []
    for index, pose in ((0, 0), (num_frames - 1, -1)):
        for actor in clip.actors:
            stills.append((_render(clip, (actor,), base, index, fps), actor.shape, actor.poses[pose].colour))
    return stills


def _frame_count(clip: EventClip, height: int, width: int, fps: float) -> int:
    if height < 8 or width < 8:
        raise ValueError(f"frame size must be at least 8x8 pixels, got height={height} width={width}")
    num_frames = round(fps * clip.duration)
    if num_frames < 1:
        raise ValueError(f"fps * duration gives no frames (fps={fps}, duration={clip.duration})")
    return num_frames


def _render(clip: EventClip, actors: tuple[Actor, ...], base: np.ndarray, index: int, fps: float) -> np.ndarray:
    """Frame `index` of the clip showing `actors`, with the clip's noise for that frame."""
    height, width = base.shape[:2]
    time = min(index / fps / clip.duration, 1.0)
    frame = base
    for actor in actors:
        x, y, size, rgb = actor.state(time)
        coverage = shape_coverage(actor.shape, x * width, y * height, size * min(height, width), height, width)
        frame = frame * (1.0 - coverage) + rgb * coverage
    noise = np.random.default_rng([clip.seed, 1, index]).normal(0.0, 6.0, size=frame.shape)
    return np.clip(np.rint(frame + noise), 0, 255).astype(np.uint8)
