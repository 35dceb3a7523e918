"""Decode chosen frames of a video file into uint8 RGB arrays on the CPU.

Two backends that give bit-identical RGB on H.264 files: decord (fast random access) and PyAV (exact seeking;
reads files decord cannot, such as raw elementary streams, truncated files, rotated files or some frame widths).
``backend="auto"`` tries decord and falls back to PyAV on any decode error. The GPU decoder (``nvdec.py``) keeps
frames in GPU memory and is chosen by the dataset, not here. Each call opens and closes its own reader, so
nothing is shared between loader worker processes. Every failure surfaces as :class:`VideoDecodeError` naming
the file and the reason, never as a library-specific exception.

A backend is a pair of small functions (probe, read) in ``BACKENDS``. Decoding can hang inside native code on a
damaged file: ``isolated.py`` runs these functions in a child process that is killed after a time limit.
"""

from __future__ import annotations

import logging
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from simvlg_video.data import pyav_backend
from simvlg_video.data.limits import DEFAULT_MAX_PIXELS, file_problem, pixel_problem

logger = logging.getLogger(__name__)

# One decoding thread per reader: parallelism comes from loader workers, and threads per reader
# multiplied by workers would oversubscribe the cores.
DECODE_THREADS = 1

# Backends tried, in order, by backend="auto".
AUTO_ORDER = ("decord", "pyav")


class VideoDecodeError(RuntimeError):
    """A video could not be read; ``path`` names the file and ``reason`` says why."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"cannot decode {path}: {reason}")
        self.path = Path(path)
        self.reason = reason

    def __reduce__(self):  # picklable, so it can cross process boundaries intact
        return type(self), (self.path, self.reason)


@dataclass(frozen=True)
class VideoInfo:
    """What a backend reports about a file without decoding it."""

    num_frames: int
    fps: float


class DecoderBackend(NamedTuple):
    """A decoder: ``probe(path) -> VideoInfo`` and ``read(path, indices) -> uint8 (N, H, W, 3)``.

    Both may raise anything; the public functions turn failures into :class:`VideoDecodeError`.
    """

    probe: Callable[[Path], VideoInfo]
    read: Callable[[Path, list[int]], np.ndarray]


class _IndexOutOfRange(Exception):
    """Raised for a requested frame past the end; reported as is, without fallback."""


# ---------------------------------------------------------------------------------------------- decord


def _open_decord(path: Path):
    """A decord reader. It has no close(): callers ``del`` it in ``finally`` so the file is released at once, even
    while an exception's traceback still holds the calling frame."""
    import decord

    return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=DECODE_THREADS)


def _decord_probe(path: Path) -> VideoInfo:
    reader = _open_decord(path)
    try:
        return VideoInfo(num_frames=len(reader), fps=float(reader.get_avg_fps()))
    finally:
        del reader


def _decord_read(path: Path, indices: list[int]) -> np.ndarray:
    reader = _open_decord(path)
    try:
        _check_in_range(indices, len(reader))
        return reader.get_batch(indices).asnumpy()
    finally:
        del reader


# ---------------------------------------------------------------------------------------------- PyAV


def _pyav_probe(path: Path) -> VideoInfo:
    num_frames, fps = pyav_backend.probe(path)
    return VideoInfo(num_frames=num_frames, fps=fps)


def _pyav_read(path: Path, indices: list[int]) -> np.ndarray:
    try:
        return pyav_backend.read(path, indices)
    except pyav_backend.FrameOutOfRange as error:
        raise _IndexOutOfRange(str(error)) from None


BACKENDS: dict[str, DecoderBackend] = {
    "decord": DecoderBackend(probe=_decord_probe, read=_decord_read),
    "pyav": DecoderBackend(probe=_pyav_probe, read=_pyav_read),
}


# ---------------------------------------------------------------------------------------------- public API


def probe_video(path: str | Path, backend: str = "auto", max_pixels: int | None = DEFAULT_MAX_PIXELS) -> VideoInfo:
    """Frame count and average frame rate (decord: the container's count; PyAV: complete packets counted); a frame
    size over `max_pixels` (None: no limit) is refused from the header."""
    path = _checked_file(path)
    check_frame_size(path, max_pixels)
    return _run_with_fallback(path, backend, lambda chosen: chosen.probe(path))


def count_frames(path: str | Path, backend: str = "auto") -> int:
    """Number of frames (see :func:`probe_video`)."""
    return probe_video(path, backend).num_frames


def read_frames(
    path: str | Path, indices: Sequence[int], backend: str = "auto", max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Frames ``indices`` (any order, repeats allowed) as uint8 RGB of shape (len(indices), H, W, 3).

    With ``backend="auto"`` a backend whose output has the wrong shape (decord on a rotated file) counts as
    failed, and the next one is tried. A frame size over ``max_pixels`` (None: no limit) is refused from the
    header, before any frame is decoded.
    """
    path = _checked_file(path)
    index_list = _checked_indices(path, indices)
    check_frame_size(path, max_pixels)

    def read_checked(chosen: DecoderBackend) -> np.ndarray:
        frames = chosen.read(path, index_list)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[0] != len(index_list) or frames.shape[3] != 3:
            raise ValueError(
                f"decoder returned {frames.dtype} array of shape {frames.shape}, expected uint8"
                f" ({len(index_list)}, H, W, 3)"
            )
        return frames

    return _run_with_fallback(path, backend, read_checked)


def backend_names(backend: str) -> tuple[str, ...]:
    """The CPU backends ``backend`` stands for, in the order they are tried."""
    if backend == "auto":
        return AUTO_ORDER
    if backend in BACKENDS:
        return (backend,)
    raise ValueError(f"unknown video backend {backend!r}; expected 'auto' or one of {sorted(BACKENDS)}")


def _run_with_fallback(path: Path, backend: str, operation: Callable[[DecoderBackend], object]):
    """Run ``operation`` on the named backend, or on each of ``AUTO_ORDER`` until one succeeds."""
    names = backend_names(backend)
    reasons = []
    for name in names:
        try:
            return operation(BACKENDS[name])
        except _IndexOutOfRange as error:
            # The file decodes; the request is wrong. Another backend would say the same.
            raise VideoDecodeError(path, "; ".join([*reasons, f"{name}: {error}"])) from None
        except Exception as error:
            reason = _short_reason(error)
            reasons.append(f"{name}: {reason}")
            if name != names[-1]:
                logger.debug("%s failed on %s (%s); trying the next backend", name, path, reason)
    raise VideoDecodeError(path, "; ".join(reasons))


def check_frame_size(path: Path, max_pixels: int | None) -> None:
    """Refuse a video whose frames are over `max_pixels`, from the stream's header (no frame is converted)."""
    if max_pixels is None:
        return
    import av

    try:
        with av.open(str(path)) as container:
            stream = pyav_backend.first_video_stream(container)
            width, height = stream.codec_context.width, stream.codec_context.height
    except Exception:  # a header PyAV cannot read: the backends report why (their decode is memory-limited
        return  # in the decode process)
    problem = pixel_problem(width, height, max_pixels)
    if problem:
        raise VideoDecodeError(path, f"frames of {problem}")


def _checked_file(path: str | Path) -> Path:
    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise VideoDecodeError(path, problem)
    return path


def _checked_indices(path: Path, indices: Sequence[int]) -> list[int]:
    index_list = [operator.index(i) for i in indices]
    if not index_list:
        raise ValueError("indices must not be empty")
    negative = sorted({i for i in index_list if i < 0})
    if negative:
        raise VideoDecodeError(path, f"frame indices {negative} out of range: indices start at 0")
    return index_list


def _check_in_range(indices: list[int], num_frames: int) -> None:
    beyond = sorted({i for i in indices if i >= num_frames})
    if beyond:
        raise _IndexOutOfRange(f"frame indices {beyond} out of range for a video of {num_frames} frames")


_DECORD_LOG_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")


def _short_reason(error: BaseException) -> str:
    """First line of a library error, without decord's '[time] file.cc:line:' prefix."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return _DECORD_LOG_PREFIX.sub("", text)
