"""Writing real video files with PyAV (FFmpeg's encoders): the synthetic sets, benchmark files and test videos all
come through here."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray | av.VideoFrame],
    fps: float,
    *,
    codec: str = "libx264",
    encoder_options: Mapping[str, str] | None = None,
    container_format: str | None = None,
    container_options: Mapping[str, str] | None = None,
    pix_fmt: str = "yuv420p",
    rotation: int = 0,
    timestamps_ms: Iterable[int] | None = None,
    atomic: bool = False,
) -> Path:
    """Encode frames (uint8 RGB arrays (H, W, 3), or PyAV frames as they are, timestamps and all) into `path`.

    `encoder_options` go to the codec (e.g. {"g": "8", "crf": "10"}), `container_options` to the muxer (e.g.
    {"movflags": "+faststart"}, {"fflags": "+bitexact"}: equal frames give equal bytes). `rotation` tags the stream
    with a display rotation; `timestamps_ms` gives frames explicit times (variable frame rate). `atomic` writes
    beside `path` and renames, so the file appears only when complete.
    """
    path = Path(path)
    target = path.with_name(path.name + ".partial") if atomic else path
    times = iter(timestamps_ms) if timestamps_ms is not None else None
    with av.open(str(target), mode="w", format=container_format, options=dict(container_options or {})) as output:
        stream = None
        for image in frames:
            frame = image if isinstance(image, av.VideoFrame) else av.VideoFrame.from_ndarray(image, format="rgb24")
            if stream is None:
                stream = _open_stream(output, codec, fps, frame, pix_fmt, encoder_options, rotation, times is not None)
            if times is not None:
                frame.pts, frame.time_base = next(times), Fraction(1, 1000)
            output.mux(stream.encode(frame))
        if stream is None:
            raise ValueError(f"no frames to write to {path}")
        output.mux(stream.encode(None))
    if atomic:
        os.replace(target, path)
    return path


def _open_stream(
    output,
    codec: str,
    fps: float,
    first: av.VideoFrame,
    pix_fmt: str,
    encoder_options: Mapping[str, str] | None,
    rotation: int,
    millisecond_times: bool,
):
    stream = output.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
    stream.width, stream.height, stream.pix_fmt = first.width, first.height, pix_fmt
    stream.options = dict(encoder_options or {})
    if millisecond_times:
        stream.codec_context.time_base = Fraction(1, 1000)
    if rotation:
        stream.set_display_rotation(rotation)
    return stream
