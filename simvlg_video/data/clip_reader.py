"""How a loader process reads a clip: what the file holds (probe), then its frames, with the chosen backend.

Backends: ``decord`` and ``pyav`` (CPU, uint8 numpy), ``nvdec`` (GPU, frames land in GPU memory) and ``auto``
(nvdec when a GPU and PyNvVideoCodec are present, else decord; PyAV when the faster one fails on a file). With a
``decode_timeout``, CPU probing and decoding, and the decoding of still images, run in a killable child process
with a memory limit (``decode_guard.py``), so a decoder that hangs in native code or a file that asks for
gigabytes costs one skipped clip, not the run. A frame over the pixel limit is refused from the header
(``limits.py``). Files with a display rotation are read by PyAV, which turns them upright (decord returns them
unturned).

Each process (or thread, for nvdec) that reads gets its own decoder; nothing is shared across worker processes.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from simvlg_video.data.decode import BACKENDS, VideoDecodeError, read_frames
from simvlg_video.data.decode_guard import DecodeGuard
from simvlg_video.data.images import read_image
from simvlg_video.data.limits import DEFAULT_DECODE_MEMORY_GIB, DEFAULT_MAX_PIXELS, file_problem
from simvlg_video.data.manifest import ClipRecord
from simvlg_video.data.probe import ProbeError, probe_file

BACKEND_CHOICES = ("auto", "nvdec", *BACKENDS)


@dataclass(frozen=True)
class ClipSource:
    """What sampling needs to know about a clip's file (from the manifest when probed there, else probed now)."""

    num_frames: int
    fps: float | None
    keyframes: tuple[int, ...] | None
    rotation: int


def resolve_backend(backend: str) -> str:
    """``auto`` becomes ``nvdec`` where the hardware decoder can be used; other names are checked and kept."""
    if backend not in BACKEND_CHOICES:
        raise ValueError(f"unknown video backend {backend!r}; expected one of {list(BACKEND_CHOICES)}")
    from simvlg_video.data.nvdec import nvdec_available

    if backend == "nvdec" and not nvdec_available():
        raise ValueError("video backend 'nvdec' needs a CUDA GPU and PyNvVideoCodec (pip install PyNvVideoCodec)")
    return "nvdec" if backend == "auto" and nvdec_available() else backend


class ClipReader:
    """Probes and decodes clips for one loader; ``backend`` as in :func:`resolve_backend` (already resolved).

    ``decode_timeout`` (seconds, or None for in-process decoding) bounds each CPU probe and decode, which then run
    in a child process that may map ``decode_memory_gib`` (None: no limit). ``max_pixels``: the largest frame or
    image (None: no limit). ``nvdec_fallback``: when the hardware decoder fails on a file, try the CPU backends
    (what ``auto`` means).
    ``open_nvdec`` makes each thread's hardware decoder (an object with ``read(path, indices, rotation=)``);
    by default an ``NvdecReader`` on the current CUDA device; a stand-in exercises the fallback without a GPU.
    """

    def __init__(
        self,
        backend: str,
        decode_timeout: float | None = None,
        nvdec_fallback: bool = False,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        decode_memory_gib: float | None = DEFAULT_DECODE_MEMORY_GIB,
        open_nvdec: Callable[[], object] | None = None,
    ) -> None:
        if backend not in BACKEND_CHOICES:
            raise ValueError(f"unknown video backend {backend!r}; expected one of {list(BACKEND_CHOICES)}")
        self.backend = backend
        self.decode_timeout = decode_timeout
        self.nvdec_fallback = nvdec_fallback
        self.open_nvdec = open_nvdec or functools.partial(_nvdec_on_current_device, max_pixels)
        self.max_pixels = max_pixels
        self._guard = DecodeGuard(
            decode_timeout,
            decode_memory_gib,
            preload=("simvlg_video.data.probe", "simvlg_video.data.decode", "simvlg_video.data.images"),
        )
        self._sources: dict[Path, ClipSource] = {}
        self._local = threading.local()

    def __getstate__(self) -> dict:  # thread-locals do not pickle; each process makes its own
        return {key: value for key, value in self.__dict__.items() if key != "_local"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def source(self, record: ClipRecord, needed: tuple[str, ...] = ()) -> ClipSource:
        """Frame count, rate, keyframes and rotation: the manifest's where it has them, the rest probed (once).

        A manifest frame count is used without probing when the other `needed` fields are there too (a frame rate
        is also needed for a window in seconds); manifests written by ``probe_videos`` have every field.
        """
        needed = (*needed, "fps") if record.start is not None or record.end is not None else needed
        if record.num_frames is not None and all(getattr(record, field) is not None for field in needed):
            return ClipSource(record.num_frames, record.fps, record.keyframes, record.rotation or 0)
        probe = self._probe(record.video_path)
        return ClipSource(
            num_frames=record.num_frames if record.num_frames is not None else probe.num_frames,
            fps=record.fps if record.fps is not None else probe.fps,
            keyframes=record.keyframes if record.keyframes is not None else probe.keyframes,
            rotation=record.rotation if record.rotation is not None else probe.rotation,
        )

    def _probe(self, path: Path) -> ClipSource:
        if path not in self._sources:
            try:
                probe = self._guard(path, probe_file, path, max_pixels=self.max_pixels)
            except ProbeError as error:
                raise VideoDecodeError(path, error.reason) from None
            self._sources[path] = ClipSource(probe.num_frames, probe.fps, probe.keyframes, probe.rotation)
        return self._sources[path]

    def read(self, path: Path, indices: list[int], source: ClipSource) -> torch.Tensor:
        """uint8 frames (T, H, W, 3): on the GPU from nvdec, else on the CPU."""
        problem = file_problem(path)  # before any decoder opens it: opening a FIFO blocks
        if problem:
            raise VideoDecodeError(path, problem)
        if self.backend == "nvdec":
            try:
                return self._nvdec().read(path, indices, rotation=source.rotation)
            except Exception as error:
                if not self.nvdec_fallback:
                    raise VideoDecodeError(path, f"nvdec: {error}") from None
                return self._read_on_cpu(path, indices, "auto", source)
        return self._read_on_cpu(path, indices, self.backend, source)

    def read_image(self, path: Path) -> np.ndarray:
        """A still image as uint8 RGB (H, W, 3), decoded under the same limits as a video."""
        return self._guard(path, read_image, path, max_pixels=self.max_pixels)

    def close(self) -> None:
        """Stop the decode process (a new one starts on the next read)."""
        self._guard.close()

    def _read_on_cpu(self, path: Path, indices: list[int], backend: str, source: ClipSource) -> torch.Tensor:
        if source.rotation:
            if backend == "decord":
                raise VideoDecodeError(
                    path,
                    f"decord ignores the file's {source.rotation} degree display rotation; use backend pyav or auto",
                )
            backend = "pyav"
        frames = self._guard(path, read_frames, path, indices, backend, max_pixels=self.max_pixels)
        return torch.from_numpy(frames)

    def _nvdec(self):
        reader = getattr(self._local, "nvdec", None)
        if reader is None:
            reader = self._local.nvdec = self.open_nvdec()
        return reader


def _nvdec_on_current_device(max_pixels: int | None):
    from simvlg_video.data.nvdec import NvdecReader

    return NvdecReader(device=torch.cuda.current_device(), max_pixels=max_pixels)
