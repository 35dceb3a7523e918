"""Synthetic motion clips: vocabulary, rendering and captions (pure functions, no file I/O).

A clip shows one coloured shape on a muted, noisy background doing one of seven motions. The motions
come in opposite pairs (left/right, up/down, grow/shrink), so a model that ignores frame order cannot
caption them correctly: this set measures exactly what the temporal adapters are meant to add.

Geometry is stored in frame-relative units (centre as a fraction of width/height, size as a fraction of
the shorter side), so one `ClipSpec` renders at any resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np

from simvlg_video.eval.shape_accuracy import (  # the vocabulary captions are written in and parsed with
    COLOURS,
    MOTIONS,
    SHAPES,
)

# Saturated colours far apart in hue, against a background kept near grey (see background).
COLOUR_RGB = {
    "red": (215, 35, 35),
    "green": (35, 185, 50),
    "blue": (35, 70, 225),
    "yellow": (235, 215, 25),
}

# "{a}" is "a red circle", "{the}" is "the red circle".
VIDEO_TEMPLATES = {
    "still": ("{a} stays still", "{a} stands still", "{the} is motionless", "{a} remains stationary"),
    "left": ("{a} moves to the left", "{a} slides left", "{the} goes left", "{a} travels leftward"),
    "right": ("{a} moves to the right", "{a} slides right", "{the} goes right", "{a} travels rightward"),
    "up": ("{a} moves up", "{a} rises", "{the} goes up", "{a} travels upward"),
    "down": ("{a} moves down", "{a} falls", "{the} goes down", "{a} travels downward"),
    "grow": ("{a} grows", "{a} gets bigger", "{the} becomes larger", "{a} expands"),
    "shrink": ("{a} shrinks", "{a} gets smaller", "{the} becomes smaller", "{a} contracts"),
}
_IMAGE_TEMPLATES = ("{a}", "{the}", "{a} shape", "a picture of {a}")

# Geometry ranges, as fractions of the frame (sizes are half-extents relative to the shorter side).
STATIC_SIZE = (0.12, 0.18)  # large enough to stay recognisable when a 96-px frame is resized to 64 px
_TRAVEL = (0.40, 0.55)  # distance moved in a clip, as a fraction of width (left/right) or height (up/down)
_SMALL_SIZE = (0.09, 0.11)  # grow starts here, shrink ends here
_SIZE_RATIO = (1.9, 2.6)  # large/small size for grow and shrink
_TRIANGLE_SCALE = 1.3  # circumradius / size, so a triangle's area is not far below a circle's
MARGIN_SCALE = _TRIANGLE_SCALE + 0.1  # the largest extent of any shape per unit of size, plus a gap


@dataclass(frozen=True)
class ClipSpec:
    """Everything needed to render one clip; geometry moves linearly from start to end."""

    shape: str
    colour: str
    motion: str
    start_x: float  # centre, fraction of width
    start_y: float  # centre, fraction of height
    end_x: float
    end_y: float
    start_size: float  # half-extent, fraction of the shorter frame side
    end_size: float
    seed: int  # background pattern and per-frame noise

    def __post_init__(self) -> None:
        _check_vocabulary(self.shape, self.colour, self.motion)


def _check_vocabulary(shape: str, colour: str, motion: str | None = None) -> None:
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; expected one of {COLOURS}")
    if motion is not None and motion not in MOTIONS:
        raise ValueError(f"unknown motion {motion!r}; expected one of {MOTIONS}")


def sample_clip_spec(rng: np.random.Generator, shape: str, colour: str, motion: str) -> ClipSpec:
    """Draw random geometry for one clip that keeps the shape inside the frame and the motion obvious."""
    _check_vocabulary(shape, colour, motion)
    if motion in ("grow", "shrink"):
        small = rng.uniform(*_SMALL_SIZE)
        large = small * rng.uniform(*_SIZE_RATIO)
        start_size, end_size = (small, large) if motion == "grow" else (large, small)
    else:
        start_size = end_size = rng.uniform(*STATIC_SIZE)
    margin = MARGIN_SCALE * max(start_size, end_size)
    start_x, start_y = rng.uniform(margin, 1.0 - margin, size=2)
    end_x, end_y = start_x, start_y
    if motion in ("left", "right", "up", "down"):
        travel = rng.uniform(_TRAVEL[0], min(_TRAVEL[1], 1.0 - 2.0 * margin))
        sign = 1.0 if motion in ("right", "down") else -1.0  # image y grows downwards
        # Place the start so that start + sign * travel stays within [margin, 1 - margin].
        start = rng.uniform(margin, 1.0 - margin - travel) + (travel if sign < 0 else 0.0)
        if motion in ("left", "right"):
            start_x, end_x = start, start + sign * travel
        else:
            start_y, end_y = start, start + sign * travel
    return ClipSpec(
        shape=shape,
        colour=colour,
        motion=motion,
        start_x=float(start_x),
        start_y=float(start_y),
        end_x=float(end_x),
        end_y=float(end_y),
        start_size=float(start_size),
        end_size=float(end_size),
        seed=int(rng.integers(0, 2**31 - 1)),
    )


def background(seed: int, height: int, width: int) -> np.ndarray:
    """A smooth, low-saturation colour pattern (float32, H x W x 3) so no pixel reads as a shape colour."""
    rng = np.random.default_rng([seed, 0])
    grid = 5
    grey = rng.uniform(85.0, 170.0, size=(grid, grid, 1))
    tint = rng.uniform(-14.0, 14.0, size=(grid, grid, 3))
    coarse = grey + tint
    ys = np.linspace(0.0, grid - 1.0, height)
    xs = np.linspace(0.0, grid - 1.0, width)
    y0 = np.minimum(ys.astype(int), grid - 2)
    x0 = np.minimum(xs.astype(int), grid - 2)
    wy = (ys - y0)[:, None, None]
    wx = (xs - x0)[None, :, None]
    top = coarse[y0][:, x0] * (1 - wx) + coarse[y0][:, x0 + 1] * wx
    bottom = coarse[y0 + 1][:, x0] * (1 - wx) + coarse[y0 + 1][:, x0 + 1] * wx
    return (top * (1 - wy) + bottom * wy).astype(np.float32)


def _signed_distance(shape: str, dx: np.ndarray, dy: np.ndarray, size_px: float) -> np.ndarray:
    """Pixels from the shape's edge (negative inside), for antialiased edges."""
    if shape == "circle":
        return np.hypot(dx, dy) - size_px
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - 0.9 * size_px
    # Upward-pointing equilateral triangle centred on its centroid: the inradius is half the circumradius.
    circumradius = _TRIANGLE_SCALE * size_px
    edges = np.maximum(dy, np.maximum(0.866 * dx - 0.5 * dy, -0.866 * dx - 0.5 * dy))
    return edges - 0.5 * circumradius


def shape_coverage(shape: str, centre_x: float, centre_y: float, size_px: float, height: int, width: int) -> np.ndarray:
    """How much of each pixel the shape covers, (H, W, 1) in [0, 1], with antialiased edges (centre in pixels)."""
    dy = np.arange(height, dtype=np.float32)[:, None] + 0.5 - centre_y
    dx = np.arange(width, dtype=np.float32)[None, :] + 0.5 - centre_x
    return np.clip(0.5 - _signed_distance(shape, dx, dy, size_px), 0.0, 1.0)[..., None]


def _check_frame_size(height: int, width: int) -> None:
    if height < 8 or width < 8:
        raise ValueError(f"frame size must be at least 8x8 pixels, got height={height} width={width}")


def render_frames(spec: ClipSpec, height: int, width: int, num_frames: int) -> np.ndarray:
    """Render a clip as uint8 RGB frames (T, H, W, 3); the same arguments always give the same pixels."""
    _check_frame_size(height, width)
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    times = np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)
    return np.stack([_render_at(spec, height, width, float(t), index) for index, t in enumerate(times)])


def render_image(spec: ClipSpec, height: int, width: int, time: float = 0.0) -> np.ndarray:
    """One uint8 RGB frame (H, W, 3) at `time` in [0, 1] of the clip: a still for image captioning.

    Rendering specs of every motion at random times covers all positions and sizes that videos show.
    """
    _check_frame_size(height, width)
    if not 0.0 <= time <= 1.0:
        raise ValueError(f"time must be within [0, 1], got {time}")
    return _render_at(spec, height, width, time, 0)


def _render_at(spec: ClipSpec, height: int, width: int, time: float, frame_index: int) -> np.ndarray:
    frame = background(spec.seed, height, width)
    centre_x = (spec.start_x + time * (spec.end_x - spec.start_x)) * width
    centre_y = (spec.start_y + time * (spec.end_y - spec.start_y)) * height
    size_px = (spec.start_size + time * (spec.end_size - spec.start_size)) * min(height, width)
    coverage = shape_coverage(spec.shape, centre_x, centre_y, size_px, height, width)
    frame = frame * (1.0 - coverage) + np.asarray(COLOUR_RGB[spec.colour], np.float32) * coverage
    noise = np.random.default_rng([spec.seed, 1, frame_index]).normal(0.0, 6.0, size=frame.shape)
    return np.clip(np.rint(frame + noise), 0, 255).astype(np.uint8)


def noun_phrases(shape: str, colour: str) -> dict[str, str]:
    article = "an" if colour[0] in "aeiou" else "a"
    return {"a": f"{article} {colour} {shape}", "the": f"the {colour} {shape}"}


def video_captions(shape: str, colour: str, motion: str) -> list[str]:
    """Paraphrases describing one clip: lowercase, no final period, one motion each."""
    _check_vocabulary(shape, colour, motion)
    phrases = noun_phrases(shape, colour)
    return [template.format(**phrases) for template in VIDEO_TEMPLATES[motion]]


def image_captions(shape: str, colour: str) -> list[str]:
    """Captions for a still image of the shape: no motion words."""
    _check_vocabulary(shape, colour)
    phrases = noun_phrases(shape, colour)
    return [template.format(**phrases) for template in _IMAGE_TEMPLATES]


def caption_groups() -> list[list[str]]:
    """Captions grouped by what they state: one group per (shape, colour, motion), holding that object's image
    captions and the video captions of that motion, in a fixed order.

    A tiny LM trained on samples drawn from one group learns that context fixes both the object and the motion of
    the caption that follows, so a soft prompt can later steer either (groups mixing motions would teach it that
    motion words cannot be read from context).
    """
    return [
        image_captions(shape, colour) + video_captions(shape, colour, motion)
        for shape, colour in product(SHAPES, COLOURS)
        for motion in MOTIONS
    ]


def caption_corpus() -> list[str]:
    """Every video and image caption once, in a fixed order (for word-level tokenizers and tiny LMs)."""
    return list(dict.fromkeys(caption for group in caption_groups() for caption in group))
