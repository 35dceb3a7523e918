"""How a loader process reads a clip: what the file holds (probe), then its frames, with the chosen backend.

Backends: ``decord`` and ``pyav`` (CPU, uint8 numpy), ``nvdec`` (GPU, frames land in GPU memory) and ``auto``
(nvdec when a GPU and PyNvVideoCodec are present, else decord; PyAV when the faster one fails on a file). With a
``decode_timeout``, CPU probing and decoding run in a killable child process (``isolated.py``), so a decoder that
hangs in native code costs one skipped clip, not the run. Files with a display rotation are read by PyAV, which
turns them upright (decord returns them unturned).

Each process (or thread, for nvdec) that reads gets its own decoder; nothing is shared across worker processes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from simvlg_video.data.decode import BACKENDS, VideoDecodeError, read_frames
from simvlg_video.data.isolated import CallTimeout, ChildDied, IsolatedCaller
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

    ``decode_timeout`` (seconds, or None for in-process decoding) bounds each CPU probe and decode.
    ``nvdec_fallback``: when the hardware decoder fails on a file, try the CPU backends (what ``auto`` means).
    ``open_nvdec`` makes each thread's hardware decoder (an object with ``read(path, indices, rotation=)``);
    by default an ``NvdecReader`` on the current CUDA device; a stand-in exercises the fallback without a GPU.
    """

    def __init__(
        self,
        backend: str,
        decode_timeout: float | None = None,
        nvdec_fallback: bool = False,
        open_nvdec: Callable[[], object] | None = None,
    ) -> None:
        if backend not in BACKEND_CHOICES:
            raise ValueError(f"unknown video backend {backend!r}; expected one of {list(BACKEND_CHOICES)}")
        if decode_timeout is not None and not decode_timeout > 0:
            raise ValueError(f"decode_timeout must be > 0 seconds or None, got {decode_timeout!r}")
        self.backend = backend
        self.decode_timeout = decode_timeout
        self.nvdec_fallback = nvdec_fallback
        self.open_nvdec = open_nvdec or _nvdec_on_current_device
        self._caller = (
            IsolatedCaller(decode_timeout, preload=("simvlg_video.data.probe", "simvlg_video.data.decode"))
            if decode_timeout is not None
            else None
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
                probe = self._call("simvlg_video.data.probe:probe_file", probe_file, path)
            except ProbeError as error:
                raise VideoDecodeError(path, error.reason) from None
            self._sources[path] = ClipSource(probe.num_frames, probe.fps, probe.keyframes, probe.rotation)
        return self._sources[path]

    def read(self, path: Path, indices: list[int], source: ClipSource) -> torch.Tensor:
        """uint8 frames (T, H, W, 3): on the GPU from nvdec, else on the CPU."""
        if self.backend == "nvdec":
            try:
                return self._nvdec().read(path, indices, rotation=source.rotation)
            except Exception as error:
                if not self.nvdec_fallback:
                    raise VideoDecodeError(path, f"nvdec: {error}") from None
                return self._read_on_cpu(path, indices, "auto", source)
        return self._read_on_cpu(path, indices, self.backend, source)

    def close(self) -> None:
        """Stop the decode process (a new one starts on the next read)."""
        if self._caller is not None:
            self._caller.close()

    def _read_on_cpu(self, path: Path, indices: list[int], backend: str, source: ClipSource) -> torch.Tensor:
        if source.rotation:
            if backend == "decord":
                raise VideoDecodeError(
                    path,
                    f"decord ignores the file's {source.rotation} degree display rotation; use backend pyav or auto",
                )
            backend = "pyav"
        frames = self._call("simvlg_video.data.decode:read_frames", read_frames, path, indices, backend)
        return torch.from_numpy(frames)

    def _call(self, name: str, function, path: Path, *args):
        """``function(path, *args)`` here, or in the child process when a time limit is set."""
        if self._caller is None:
            return function(path, *args)
        try:
            return self._caller(name, path, *args)
        except CallTimeout:
            raise VideoDecodeError(
                path, f"decoding did not finish within {self.decode_timeout:g} s (decoder process killed)"
            ) from None
        except ChildDied as error:
            raise VideoDecodeError(path, str(error)) from None

    def _nvdec(self):
        reader = getattr(self._local, "nvdec", None)
        if reader is None:
            reader = self._local.nvdec = self.open_nvdec()
        return reader


def _nvdec_on_current_device():
    from simvlg_video.data.nvdec import NvdecReader

    return NvdecReader(device=torch.cuda.current_device())
