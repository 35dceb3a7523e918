"""Frame samplers: which frame indices of a clip to decode.

Every sampler has the same signature, ``(num_available, num_frames, rng=None, *, fps=None, keyframes=None)
-> list[int]``, and returns ``num_frames`` sorted indices in ``[0, num_available)``. ``rng=None`` means evaluation:
the choice is deterministic. ``fps`` (the video's frame rate) and ``keyframes`` (keyframe positions, relative to
the clip) are passed by the dataset for the samplers that need them and ignored by the rest. When a clip has
fewer frames than requested, indices repeat but stay sorted and spread over the clip, so every clip of a batch
has ``num_frames`` frames.

Windows: a sampler sees only the frames of its clip. :func:`sample_window` turns a [start, end] window in
seconds (a manifest's clip boundaries) into that frame range, calls the sampler and shifts the indices back, so
every sampler accepts a window. Configs and model directories name these functions through the registry in
:mod:`simvlg_video.data.samplers` (``{name: uniform}``, ``{name: fps, rate: 2.0}``), which also holds their defaults.
"""

from __future__ import annotations

import bisect
import math
import operator
from collections.abc import Callable, Sequence

import numpy as np


class ClipWindowError(ValueError):
    """A clip's [start, end] window is empty or lies outside the video."""


Rng = np.random.Generator | None
Keyframes = Sequence[int] | None

# Tolerance when turning seconds into frame numbers, so that e.g. 2.0 s at 30 fps is frame 60, not 61.
_TIME_EPSILON = 1e-6


def _check_counts(num_available: int, num_frames: int) -> tuple[int, int]:
    """Validate both counts as positive integers (numpy integers are fine, bools and floats are not)."""
    checked = []
    for name, value in (("num_available", num_available), ("num_frames", num_frames)):
        if isinstance(value, bool):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
        try:
            value = operator.index(value)
        except TypeError:
            raise ValueError(f"{name} must be a positive integer, got {value!r}") from None
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
        checked.append(value)
    return checked[0], checked[1]


def _segment_points(num_available: int, num_frames: int, offset_halves: int) -> list[int]:
    """Index of a fixed point inside each of ``num_frames`` equal segments.

    ``offset_halves`` is where in the segment, in half-segments: 0 = its first frame, 1 = its middle.
    Integer arithmetic, so results do not depend on float rounding.
    """
    return [((2 * i + offset_halves) * num_available) // (2 * num_frames) for i in range(num_frames)]


def uniform(
    num_available: int, num_frames: int, rng: Rng = None, *, fps: float | None = None, keyframes: Keyframes = None
) -> list[int]:
    """Middle frame of each of ``num_frames`` equal segments (the evaluation default; ``rng`` is unused)."""
    num_available, num_frames = _check_counts(num_available, num_frames)
    return _segment_points(num_available, num_frames, offset_halves=1)


def head(
    num_available: int, num_frames: int, rng: Rng = None, *, fps: float | None = None, keyframes: Keyframes = None
) -> list[int]:
    """First frame of each of ``num_frames`` equal segments (the reference's evaluation sampling; ``rng`` unused)."""
    num_available, num_frames = _check_counts(num_available, num_frames)
    return _segment_points(num_available, num_frames, offset_halves=0)


def _pick_in_range(start: int, stop: int, count: int, rng: np.random.Generator | None) -> list[int]:
    """``count`` sorted indices in ``[start, stop)``: random and distinct when ``rng`` is given and the range is
    long enough, otherwise the middle frame of ``count`` equal segments (which repeats frames of a short range)."""
    if count == 0:
        return []
    length = stop - start
    if rng is None or length < count:
        return [start + i for i in _segment_points(length, count, offset_halves=1)]
    chosen = rng.choice(length, size=count, replace=False)
    return sorted(start + int(i) for i in chosen)


def headtail(
    num_available: int, num_frames: int, rng: Rng = None, *, fps: float | None = None, keyframes: Keyframes = None
) -> list[int]:
    """The reference's training sampling: ``num_frames // 2`` random frames from the first half of the clip and
    the rest from the second half, each group sorted and without repeats where the half is long enough.

    With ``rng=None`` the choice is deterministic: the middle frame of equal segments within each half.
    A one-frame clip has no first half, so every index is 0.
    """
    num_available, num_frames = _check_counts(num_available, num_frames)
    if num_available == 1:
        return [0] * num_frames
    middle = num_available // 2
    first_count = num_frames // 2
    return _pick_in_range(0, middle, first_count, rng) + _pick_in_range(
        middle, num_available, num_frames - first_count, rng
    )


def random_segment(
    num_available: int, num_frames: int, rng: Rng = None, *, fps: float | None = None, keyframes: Keyframes = None
) -> list[int]:
    """One random frame from each of ``num_frames`` equal segments (TSN-style); with ``rng=None`` the middle one."""
    num_available, num_frames = _check_counts(num_available, num_frames)
    if rng is None or num_available < num_frames:
        return _segment_points(num_available, num_frames, offset_halves=1)
    starts = [(i * num_available) // num_frames for i in range(num_frames + 1)]
    return [int(rng.integers(starts[i], starts[i + 1])) for i in range(num_frames)]


def random(
    num_available: int, num_frames: int, rng: Rng = None, *, fps: float | None = None, keyframes: Keyframes = None
) -> list[int]:
    """``num_frames`` distinct frames drawn anywhere in the clip, sorted; with ``rng=None`` the uniform choice."""
    num_available, num_frames = _check_counts(num_available, num_frames)
    return _pick_in_range(0, num_available, num_frames, rng)


def at_rate(
    num_available: int,
    num_frames: int,
    rng: Rng = None,
    *,
    fps: float | None = None,
    keyframes: Keyframes = None,
    rate: float,
) -> list[int]:
    """Frames ``rate`` per second of video, at most ``num_frames`` of them: equal time between frames whatever the
    clip's length, so motion looks equally fast in every clip (the ``fps`` sampler, whose default rate is in
    :mod:`simvlg_video.data.samplers`).

    A clip with more than ``num_frames`` frames at that rate gives a run of ``num_frames`` consecutive ones,
    centred (``rng=None``) or at a random start; a shorter clip repeats its frames, spread evenly, up to
    ``num_frames``. Needs the video's ``fps``.
    """
    num_available, num_frames = _check_counts(num_available, num_frames)
    if fps is None or not fps > 0:
        raise ValueError(f"the at_rate sampler needs the video's frame rate (fps > 0), got fps={fps!r}")
    if not rate > 0:
        raise ValueError(f"rate must be > 0 frames per second, got {rate!r}")
    step = max(fps / rate, 1.0)  # frames of video between two sampled frames
    on_rate = int((num_available - 1) // step) + 1
    if on_rate <= num_frames:
        chosen = [int(k * step) for k in range(on_rate)]
        return [chosen[i] for i in _segment_points(on_rate, num_frames, offset_halves=1)]
    first = (on_rate - num_frames) // 2 if rng is None else int(rng.integers(on_rate - num_frames + 1))
    return [int((first + k) * step) for k in range(num_frames)]


def needed_fields(sampler) -> tuple[str, ...]:
    """The probed manifest fields a frame sampler (or a partial of one) cannot work without."""
    return getattr(getattr(sampler, "func", sampler), "needs", ())


def keyframe(
    num_available: int, num_frames: int, rng: Rng = None, *, fps: float | None = None, keyframes: Keyframes = None
) -> list[int]:
    """The keyframe nearest to each uniform target (``rng=None``) or random-segment target: a keyframe decodes on
    its own, so a long video costs one decoded frame per sample instead of a group of pictures.

    ``keyframes`` are the clip's keyframe positions (from the probe, relative to the clip). Nearby targets can
    share a keyframe, so frames repeat when keyframes are sparse. A clip without a keyframe inside it (a short
    window within one group of pictures) uses the targets themselves, decoded exactly.
    """
    if keyframes is None:
        raise ValueError(
            "the keyframe sampler needs keyframe positions: probe the videos first"
            " (python -m simvlg_video.data_tools.probe_videos)"
        )
    targets = random_segment(num_available, num_frames, rng)
    inside = sorted(k for k in keyframes if 0 <= k < num_available)
    if not inside:
        return targets
    return [_nearest(inside, target) for target in targets]


keyframe.needs = ("keyframes",)
at_rate.needs = ("fps",)


def _nearest(sorted_values: list[int], target: int) -> int:
    """The value closest to ``target`` (the earlier one on a tie)."""
    at = bisect.bisect_left(sorted_values, target)
    candidates = sorted_values[max(at - 1, 0) : at + 1]
    return min(candidates, key=lambda value: (abs(value - target), value))


def frame_window(total_frames: int, fps: float | None, start: float | None, end: float | None) -> tuple[int, int]:
    """Frame range [first, stop) shown between ``start`` and ``end`` seconds (None = the video's start / end),
    clipped to the ``total_frames`` the video holds. An empty or reversed window is a :class:`ClipWindowError`."""
    if start is None and end is None:
        return 0, total_frames
    if fps is None or not fps > 0:
        raise ClipWindowError(f"a window in seconds needs the video's frame rate, got fps={fps!r}")
    if start is not None and end is not None and end <= start:
        raise ClipWindowError(f"window end={end} s must be after start={start} s")
    first = math.ceil(start * fps - _TIME_EPSILON) if start is not None else 0
    stop = math.ceil(end * fps - _TIME_EPSILON) if end is not None else total_frames
    stop = min(stop, total_frames)
    if stop <= first:
        raise ClipWindowError(
            f"clip window start={start} end={end} s holds no frames of a video with {total_frames} frames at {fps} fps"
        )
    return first, stop


def sample_window(
    sampler: Callable[..., list[int]],
    num_frames: int,
    total_frames: int,
    *,
    fps: float | None = None,
    window: tuple[float | None, float | None] = (None, None),
    keyframes: Sequence[int] | None = None,
    rng: Rng = None,
) -> list[int]:
    """Absolute frame indices from ``sampler`` applied to the frames inside ``window`` (seconds)."""
    first, stop = frame_window(total_frames, fps, *window)
    relative_keyframes = None if keyframes is None else [k - first for k in keyframes if first <= k < stop]
    offsets = sampler(stop - first, num_frames, rng, fps=fps, keyframes=relative_keyframes)
    if len(offsets) != num_frames or not all(0 <= offset < stop - first for offset in offsets):
        raise ValueError(
            f"sampler {sampler!r} returned {offsets} for {stop - first} frames and"
            f" num_frames={num_frames}; expected {num_frames} indices in range"
        )
    return [first + int(offset) for offset in offsets]
