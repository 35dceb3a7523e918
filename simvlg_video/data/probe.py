"""Read what a video file really holds, once, without decoding it: a demux pass over its packets.

A container's header can promise frames that are not there (a truncated download keeps its header), and a
decoder asked for one of those frames can fail or hang. The probe counts the packets that are actually in the
file, stops at the first partial one, and records where the keyframes are, so samplers stay inside the decodable
range and the ``keyframe`` sampler can pick frames that need no other frame decoded. The result goes into the
manifest (``python -m simvlg_video.data_tools.probe_videos``) so training never probes twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from simvlg_video.data.decode import VideoDecodeError
from simvlg_video.data.decode_guard import map_guarded
from simvlg_video.data.limits import (
    DEFAULT_DECODE_MEMORY_GIB,
    DEFAULT_DECODE_TIMEOUT,
    DEFAULT_MAX_PIXELS,
    file_problem,
    pixel_problem,
)


class ProbeError(RuntimeError):
    """A file has no readable video stream; ``path`` names it and ``reason`` says why."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"cannot probe {path}: {reason}")
        self.path = Path(path)
        self.reason = reason

    def __reduce__(self):  # picklable across the process pool
        return type(self), (self.path, self.reason)


@dataclass(frozen=True)
class VideoProbe:
    """What a file holds. Frame numbers are in presentation order, the order every decoder returns frames in.

    ``num_frames`` counts complete packets (one per frame for the codecs we meet); ``reported_frames`` is what the
    container's header claims (0 when it does not say), so ``reported_frames > num_frames`` marks a truncated file.
    ``rotation`` is the counter-clockwise turn, in degrees, that the file asks players to apply; decoders apply
    it, and ``width`` and ``height`` are those of the turned frames.
    ``colour_matrix`` and ``full_range`` are the YUV->RGB conversion FFmpeg applies to this stream by default.
    """

    num_frames: int
    fps: float
    duration: float
    width: int
    height: int
    keyframes: tuple[int, ...]
    reported_frames: int = 0
    rotation: int = 0
    colour_matrix: str = "bt601"
    full_range: bool = False

    def record_fields(self) -> dict:
        """The probed fields of a manifest record (``manifest.METADATA_KEYS``), for ``dataclasses.replace``."""
        return {
            "num_frames": self.num_frames,
            "fps": self.fps,
            "duration": self.duration,
            "width": self.width,
            "height": self.height,
            "keyframes": self.keyframes,
            "rotation": self.rotation,
        }


# FFmpeg colour-space codes (AVColorSpace) that swscale converts with the BT.709 matrix; every other value,
# "unspecified" included, gets its default BT.601 matrix.
_BT709_COLOURSPACES = {1}
_FULL_RANGE = 2  # AVCOL_RANGE_JPEG
_FULL_RANGE_PIXEL_FORMATS = {"yuvj420p", "yuvj422p", "yuvj444p", "yuvj440p", "yuvj411p"}


def probe_file(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> VideoProbe:
    """Probe one file with PyAV (demux only). Raises :class:`ProbeError` for files without decodable video, and for
    frames over `max_pixels` (None: no limit), seen in the stream's header before the first frame is decoded."""
    import av

    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise ProbeError(path, problem)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ProbeError(path, "the file has no video stream")
            stream = container.streams.video[0]
            problem = pixel_problem(stream.codec_context.width, stream.codec_context.height, max_pixels)
            if problem:
                raise ProbeError(path, f"frames of {problem}")
            packets = _complete_packets(container, stream)
            probe = _summarise(path, stream, packets)
        return probe
    except ProbeError:
        raise
    except Exception as error:
        raise ProbeError(path, _first_line(error).replace(f": '{path}'", "")) from None


def _complete_packets(container, stream) -> list[tuple[int | None, int | None, bool]]:
    """(pts, duration, is_keyframe) of each packet up to the first partial one, in decode order.

    A packet cut short by the end of the file is flagged corrupt by FFmpeg; a demuxer error ends the file too.
    Both stop the count, because frames after a damaged packet may not decode.
    """
    packets = []
    try:
        for packet in container.demux(stream):
            if packet.size == 0:  # the demuxer's end-of-stream marker
                continue
            if packet.is_corrupt:
                break
            packets.append((packet.pts, packet.duration, bool(packet.is_keyframe)))
    except Exception:
        pass
    return packets


def _summarise(path: Path, stream, packets: list[tuple[int | None, int | None, bool]]) -> VideoProbe:
    if not packets:
        raise ProbeError(path, "the video stream holds no complete frame")
    rate = stream.average_rate or stream.guessed_rate
    if not rate or rate <= 0:
        raise ProbeError(path, "the video stream reports no frame rate")
    timestamps = [pts for pts, _, _ in packets]
    if None not in timestamps and len(set(timestamps)) == len(timestamps):
        # Presentation order: a frame's number is its rank by timestamp (B-frames arrive out of order).
        order = sorted(range(len(packets)), key=lambda i: packets[i][0])
        rank = {decode_position: shown for shown, decode_position in enumerate(order)}
        keyframes = sorted(rank[i] for i, (_, _, key) in enumerate(packets) if key)
        first = packets[order[0]][0]
        last_pts, last_duration, _ = packets[order[-1]]
        span = (last_pts + (last_duration or 0) - first) * stream.time_base
        duration = float(span) if span > 0 else len(packets) / float(rate)
    else:  # no usable timestamps (raw streams, or repeated ones): decode order is presentation order
        keyframes = [i for i, (_, _, key) in enumerate(packets) if key]
        duration = len(packets) / float(rate)
    if not keyframes:
        raise ProbeError(path, "the video stream has no keyframe to start decoding from")
    # Frames per second of what the file holds (the container's average can be off by edit lists and B-frame delay).
    fps = len(packets) / duration if duration > 0 else float(rate)
    codec = stream.codec_context
    rotation = _rotation(path)
    turned = rotation in (90, 270)  # frames come out rotated, so their width and height swap
    return VideoProbe(
        num_frames=len(packets),
        fps=fps,
        duration=round(duration, 6),
        width=int(codec.height if turned else codec.width),
        height=int(codec.width if turned else codec.height),
        keyframes=tuple(keyframes),
        reported_frames=max(int(stream.frames), 0),
        rotation=rotation,
        colour_matrix="bt709" if getattr(codec, "colorspace", 2) in _BT709_COLOURSPACES else "bt601",
        full_range=getattr(codec, "color_range", 0) == _FULL_RANGE or codec.pix_fmt in _FULL_RANGE_PIXEL_FORMATS,
    )


def _rotation(path: Path) -> int:
    """Counter-clockwise display rotation in degrees (0, 90, 180 or 270) from the stream's display matrix.

    PyAV exposes the matrix on decoded frames only, so this decodes the first frame (a keyframe: one frame).
    """
    import av

    with av.open(str(path)) as container:
        frame = next(container.decode(container.streams.video[0]), None)
    angle = getattr(frame, "rotation", 0) or 0
    if not math.isclose(angle % 90, 0, abs_tol=1) and not math.isclose(angle % 90, 90, abs_tol=1):
        raise ProbeError(path, f"display rotation of {angle} degrees is not a multiple of 90")
    return round(angle / 90) % 4 * 90


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def probe_paths(
    paths: list[Path],
    workers: int = 4,
    timeout: float = DEFAULT_DECODE_TIMEOUT,
    show_progress: bool = True,
    memory_gib: float | None = DEFAULT_DECODE_MEMORY_GIB,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> dict[Path, VideoProbe | str]:
    """Each distinct path -> its probe, or the reason it could not be probed; ``workers`` decode processes, each
    call within the time and memory limits."""
    unique = list(dict.fromkeys(paths))
    found: dict[Path, VideoProbe | str] = {}
    jobs = ((path, (path,)) for path in unique)
    outcomes = map_guarded(
        probe_file, jobs, workers, timeout, memory_gib, ("simvlg_video.data.probe",), max_pixels=max_pixels
    )
    for path, outcome in tqdm(outcomes, total=len(unique), desc="probe", disable=not show_progress, dynamic_ncols=True):
        if isinstance(outcome, (ProbeError, VideoDecodeError)):
            outcome = outcome.reason
        elif isinstance(outcome, Exception):
            raise outcome
        found[path] = outcome
    return {path: found[path] for path in unique}
