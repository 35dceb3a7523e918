"""The NVIDIA hardware decoder (NVDEC, through PyNvVideoCodec): frames decoded straight into GPU memory.

Opening a hardware decoder costs about as much as decoding a clip on the CPU, so a :class:`NvdecReader` keeps its
decoder open and points it at each new file (``reconfigure_decoder``); one reader per loader thread keeps several
decodes in flight on the GPU's decode engines. Frames are taken in their native NV12 form and converted to RGB
on the reader's own CUDA stream with the matrix FFmpeg's CPU decoders use (``colour.py``), so the same indices
give the same pixels as decord and PyAV. PyNvVideoCodec is an optional extra: :func:`nvdec_available` says
whether this process can use it.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch

from simvlg_video.data.colour import nv12_to_rgb
from simvlg_video.data.limits import DEFAULT_MAX_PIXELS, pixel_problem

logger = logging.getLogger(__name__)

# The decoder's frame pool is sized for this at construction; a larger video rebuilds the decoder.
DEFAULT_MAX_SIZE = (1920, 1088)


@functools.cache
def nvdec_available() -> bool:
    """True when a CUDA GPU is visible and PyNvVideoCodec imports."""
    if not torch.cuda.is_available():
        return False
    try:
        import PyNvVideoCodec  # noqa: F401
    except ImportError:
        return False
    return True


class NvdecReader:
    """One open hardware decoder on ``device``; not thread-safe: give each thread its own. A file whose frames are
    over ``max_pixels`` (None: no limit) is refused from its header, before a decoder is built for it."""

    def __init__(
        self, device: int = 0, max_size: tuple[int, int] = DEFAULT_MAX_SIZE, max_pixels: int | None = DEFAULT_MAX_PIXELS
    ) -> None:
        import PyNvVideoCodec as nvc

        self._nvc = nvc
        self.device = torch.device("cuda", device)
        self.max_size = max_size
        self.max_pixels = max_pixels
        self.stream = torch.cuda.Stream(device=self.device)
        self._decoder = None
        self._path: str | None = None
        self._header_colour = ("bt601", False)  # of the file at self._path
        self._built_for = (0, 0)
        self.opened = 0  # decoders built (the slow part); the rest were reconfigured

    def read(
        self, path: str | Path, indices: list[int], colour: tuple[str, bool] | None = None, rotation: int = 0
    ) -> torch.Tensor:
        """Frames ``indices`` (any order, repeats allowed) as uint8 RGB (len(indices), H, W, 3) on the GPU.

        ``colour`` is (matrix, full_range) from the probe; None reads it from the file's header. ``rotation`` is
        the counter-clockwise display rotation in degrees (from the probe), applied to the frames.
        """
        path = str(path)
        wanted = sorted(set(indices))
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            decoder = self._decoder_for(path)
            metadata = decoder.get_stream_metadata()
            width, height = int(metadata.width), int(metadata.height)
            available = len(decoder)
            beyond = [i for i in wanted if i >= available]
            if beyond:
                raise IndexError(f"frame indices {beyond} out of range for a video of {available} frames")
            decoded = decoder.get_batch_frames_by_index(wanted)
            if len(decoded) != len(wanted):
                raise RuntimeError(f"the hardware decoder returned {len(decoded)} of {len(wanted)} frames")
            nv12 = torch.stack([_as_nv12_plane(torch.from_dlpack(frame)) for frame in decoded])
            del decoded
            matrix, full_range = colour if colour is not None else self._header_colour
            # The surface may be taller than the picture (coded height, e.g. 1088 for 1080): convert it whole,
            # then keep the picture.
            surface_height = 2 * nv12.shape[-2] // 3
            rgb = nv12_to_rgb(nv12, surface_height, nv12.shape[-1], matrix, full_range)[:, :height, :width]
            position = {index: at for at, index in enumerate(wanted)}
            frames = rgb[torch.tensor([position[i] for i in indices], device=self.device)]
            turns = round(rotation / 90) % 4
            if turns:
                frames = torch.rot90(frames, turns, dims=(1, 2)).contiguous()
        self.stream.synchronize()
        # The frames were allocated on this reader's stream and are used on the consumer's (default) stream:
        # tell the caching allocator, so their memory is not handed out again while that use is pending.
        frames.record_stream(torch.cuda.default_stream(self.device))
        return frames

    def close(self) -> None:
        """Release the hardware decoder."""
        self._decoder, self._path = None, None

    def _decoder_for(self, path: str):
        if self._decoder is not None and self._path == path:
            return self._decoder
        size, self._header_colour = self._read_header(path)
        problem = pixel_problem(*size, self.max_pixels)
        if problem:
            raise ValueError(f"frames of {problem}")
        if self._decoder is not None and size[0] <= self._built_for[0] and size[1] <= self._built_for[1]:
            try:
                self._decoder.reconfigure_decoder(path)
                self._path = path
                return self._decoder
            except Exception as error:
                logger.debug("reconfiguring the hardware decoder for %s failed (%s); rebuilding it", path, error)
        self.close()
        built_for = (max(size[0], self.max_size[0]), max(size[1], self.max_size[1]))
        self._decoder = self._nvc.SimpleDecoder(
            path,
            gpu_id=self.device.index,
            cuda_stream=self.stream.cuda_stream,
            use_device_memory=True,
            max_width=built_for[0],
            max_height=built_for[1],
            output_color_type=self._nvc.OutputColorType.NATIVE,
        )
        self._path, self._built_for = path, built_for
        self.opened += 1
        return self._decoder

    def _read_header(self, path: str) -> tuple[tuple[int, int], tuple[str, bool]]:
        """Coded (width, height), and (matrix, full_range) as FFmpeg's swscale picks them: BT.709 only for streams
        that say so, full range only for streams that say so."""
        demuxer = self._nvc.CreateDemuxer(path)
        matrix = "bt709" if "709" in str(demuxer.ColorSpace()) else "bt601"
        full_range = "JPEG" in str(demuxer.ColorRange()).upper()
        return (int(demuxer.Width()), int(demuxer.Height())), (matrix, full_range)


def _as_nv12_plane(frame: torch.Tensor) -> torch.Tensor:
    """A decoded NV12 frame as one (H * 3/2, W) uint8 plane (PyNvVideoCodec may add a trailing channel axis)."""
    if frame.ndim == 3 and frame.shape[-1] == 1:
        frame = frame[..., 0]
    if frame.ndim != 2 or frame.dtype != torch.uint8:
        raise RuntimeError(
            f"expected an NV12 frame (H * 3/2, W) uint8 from the decoder, got {frame.dtype}"
            f" {tuple(frame.shape)}: is the video 8-bit 4:2:0?"
        )
    return frame
