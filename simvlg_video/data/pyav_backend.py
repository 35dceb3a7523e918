"""The PyAV decoder backend: exact frames by seeking to the keyframe before each wanted frame.

One demux pass (no decoding) lists every packet's timestamp, which gives each frame its number in presentation
order (the order decord numbers frames in) and says where the keyframes are. Frames are then decoded from the
keyframe at or before each wanted frame, so a frame late in a long video costs one group of pictures, not the
whole video, and a keyframe costs one frame. On the way, frames that are neither wanted nor referenced by other
frames (most B-frames) are not decoded at all. Packets past the first partial one (a truncated file) are never
sent to the decoder. Frames are turned upright when the file carries a display rotation.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# One decoding thread per reader: parallelism comes from loader workers (see decode.py).
DECODE_THREADS = 1


class FrameOutOfRange(IndexError):
    """A requested frame number is past the last frame the file holds."""


@dataclass(frozen=True)
class _PacketIndex:
    """Presentation timestamps in order (None for raw streams without timestamps) and keyframe frame numbers."""

    timestamps: list[int] | None
    keyframes: list[int]
    num_frames: int


def probe(path: Path) -> tuple[int, float]:
    """(frames the file holds, average frame rate), from a demux pass."""
    import av

    with av.open(str(path)) as container:
        stream = first_video_stream(container)
        index = _index_packets(container, stream)
        rate = stream.average_rate or stream.guessed_rate
        if not rate:
            raise ValueError("the video stream reports no frame rate")
        return index.num_frames, float(rate)


def read(path: Path, indices: list[int]) -> np.ndarray:
    """Frames ``indices`` (any order, repeats allowed) as uint8 RGB (len(indices), H, W, 3)."""
    import av

    wanted = sorted(set(indices))
    with av.open(str(path)) as container:
        stream = first_video_stream(container)
        stream.codec_context.thread_count = DECODE_THREADS
        index = _index_packets(container, stream)
        beyond = [i for i in wanted if i >= index.num_frames]
        if beyond:
            raise FrameOutOfRange(f"frame indices {beyond} out of range for a video of {index.num_frames} frames")
        if index.timestamps is not None:
            found = _decode_with_seeks(container, stream, index, wanted)
    if index.timestamps is None:  # reopened rather than seeking back: raw streams may not seek
        with av.open(str(path)) as container:
            stream = first_video_stream(container)
            stream.codec_context.thread_count = DECODE_THREADS
            found = _decode_in_order(container, stream, wanted)
    return np.stack([found[i] for i in indices])


def first_video_stream(container):
    if not container.streams.video:
        raise ValueError("the file has no video stream")
    return container.streams.video[0]


def _index_packets(container, stream) -> _PacketIndex:
    """Timestamps and keyframes of the complete packets (the same rule as ``probe.py``: stop at a partial one)."""
    timestamps: list[int | None] = []
    keys: list[bool] = []
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            if packet.is_corrupt:
                break
            timestamps.append(packet.pts)
            keys.append(bool(packet.is_keyframe))
    except Exception:
        pass
    if not timestamps:
        raise ValueError("the video stream holds no complete frame")
    if any(pts is None for pts in timestamps) or len(set(timestamps)) < len(timestamps):
        # No timestamps (raw streams) or repeated ones (a broken muxer): they cannot order or find frames, so
        # decode order is taken as presentation order and frames are decoded from the start.
        return _PacketIndex(None, [i for i, key in enumerate(keys) if key], len(timestamps))
    order = sorted(range(len(timestamps)), key=timestamps.__getitem__)
    shown_at = {position: shown for shown, position in enumerate(order)}
    keyframes = sorted(shown_at[i] for i, key in enumerate(keys) if key)
    return _PacketIndex([timestamps[i] for i in order], keyframes, len(timestamps))


def _decoded_frames(container, stream, unwanted=None):
    """Frames from the current read position on: complete packets only, then the decoder's buffered frames.

    `unwanted(packet)`: True for a packet whose frame is not needed. The decoder then skips it if no other frame
    refers to it (FFmpeg's skip_frame=NONREF, e.g. most B-frames), which leaves every other frame bit-identical.
    """
    codec = stream.codec_context
    for packet in container.demux(stream):
        if packet.size == 0:
            continue
        if packet.is_corrupt:
            break
        if unwanted is not None:
            codec.skip_frame = "NONREF" if unwanted(packet) else "DEFAULT"
        yield from codec.decode(packet)
    codec.skip_frame = "DEFAULT"
    yield from codec.decode(None)


def _decode_in_order(container, stream, wanted: list[int]) -> dict[int, np.ndarray]:
    """Raw streams have no timestamps to seek by: decode from the start, keep the wanted frames."""
    wanted_set, last = set(wanted), wanted[-1]
    found = {}
    for number, frame in enumerate(_decoded_frames(container, stream)):
        if number in wanted_set:
            found[number] = _to_rgb(frame)
        if number >= last:
            break
    return _check_found(found, wanted)


def _decode_with_seeks(container, stream, index: _PacketIndex, wanted: list[int]) -> dict[int, np.ndarray]:
    """Decode each run of wanted frames from the keyframe before its first frame.

    A run ends where the next wanted frame has a keyframe of its own after the frame just decoded: seeking there
    skips the frames in between. Every seek must produce its target, so a file whose timestamps lie cannot loop.
    """
    number_of = {pts: number for number, pts in enumerate(index.timestamps)}
    wanted_set = set(wanted)
    found: dict[int, np.ndarray] = {}
    codec = stream.codec_context
    position = 0

    def unwanted(packet) -> bool:
        return number_of.get(packet.pts) not in wanted_set

    while position < len(wanted):
        target = wanted[position]
        start = _keyframe_at_or_before(index.keyframes, target)
        container.seek(index.timestamps[start], stream=stream, backward=True, any_frame=False)
        codec.flush_buffers()
        for frame in _decoded_frames(container, stream, unwanted):
            number = number_of.get(frame.pts)
            if number is None or number < start:
                continue
            if number in wanted[position:] and number not in found:
                found[number] = _to_rgb(frame)
            while position < len(wanted) and wanted[position] in found:
                position += 1
            if position == len(wanted) or _keyframe_at_or_before(index.keyframes, wanted[position]) > number + 1:
                break
        if target not in found:
            raise ValueError(f"frame {target} did not come out of the decoder after seeking to frame {start}")
    return found


def _keyframe_at_or_before(keyframes: list[int], number: int) -> int:
    at = bisect.bisect_right(keyframes, number) - 1
    return keyframes[max(at, 0)]


def _check_found(found: dict[int, np.ndarray], wanted: list[int]) -> dict[int, np.ndarray]:
    missing = [i for i in wanted if i not in found]
    if missing:
        raise FrameOutOfRange(f"frame indices {missing} out of range: the decoder produced {len(found)} of them")
    return found


def _to_rgb(frame) -> np.ndarray:
    """RGB of a decoded frame, turned by the file's display rotation (counter-clockwise, as players turn it)."""
    rgb = frame.to_ndarray(format="rgb24")
    turns = round((getattr(frame, "rotation", 0) or 0) / 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb
