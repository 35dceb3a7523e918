"""Write a folder of deliberately awkward and broken video files, with a manifest, to test that loading survives.

    python -m simvlg_video.data_tools.make_broken_videos --out data/broken

Every case a real dataset throws at a loader: a missing file, an empty one, a truncated download (index at the
end, so it is gone), a truncated file whose header still promises every frame, a text file named .mp4, an
audio-only file, a single-frame video, odd frame sizes (one decord cannot read), variable frame rate and a
display rotation; plus ordinary clips. ``BROKEN_CASES`` says which ones a loader must skip and which it must
decode; ``make_broken_set`` returns the manifest path.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import av
import numpy as np

from simvlg_video.data.manifest import write_manifest
from simvlg_video.data.video_writer import write_video

# case -> True when the file can be decoded (a loader must return its frames), False when it must be skipped
BROKEN_CASES = {
    "missing": False,
    "empty": False,
    "truncated_no_index": False,
    "not_a_video": False,
    "audio_only": False,
    "truncated_header_promises_more": True,  # the frames that are there decode; the promised rest is never asked for
    "single_frame": True,
    "odd_size_33x25": True,
    "width_48": True,  # decord 0.6 fails on this width; PyAV reads it
    "variable_frame_rate": True,
    "rotated_90": True,
}
NUM_GOOD = 6
FPS = 10


def _frames(count: int, height: int, width: int, seed: int) -> list[np.ndarray]:
    """A bright square moving over noise: real motion, so codecs produce P/B-frames of normal size."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 120, (height, width, 3), dtype=np.uint8)
    frames = []
    for index in range(count):
        frame = background.copy()
        left = (index * 3) % max(width - 8, 1)
        frame[height // 4 : height // 4 + 8, left : left + 8] = (250, 200, 40)
        frames.append(frame)
    return frames


def write_h264(path: Path, frames: list[np.ndarray], gop: int = 12, **options) -> Path:
    """RGB frames into an mp4 with a keyframe every `gop` frames exactly (other options: `write_video`'s)."""
    return write_video(path, frames, FPS, encoder_options={"g": str(gop), "sc_threshold": "0", "crf": "23"}, **options)


def _write_audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        for index in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, index * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _write_case(case: str, folder: Path) -> Path:
    path = folder / f"{case}.mp4"
    frames = _frames(30, 48, 64, seed=len(case))
    if case == "missing":
        return path
    if case == "empty":
        path.write_bytes(b"")
    elif case == "not_a_video":
        path.write_text("this is a caption file, not a video\n")
    elif case == "audio_only":
        _write_audio_only(path)
    elif case in ("truncated_no_index", "truncated_header_promises_more"):
        whole = write_h264(
            folder / f".{case}.whole.mp4",
            frames,
            container_options={"movflags": "faststart"} if case.endswith("more") else None,
        )
        data = whole.read_bytes()
        whole.unlink()
        path.write_bytes(data[: len(data) * 6 // 10])
    elif case == "single_frame":
        write_h264(path, frames[:1])
    elif case == "odd_size_33x25":
        write_h264(path, _frames(12, 25, 33, seed=1), pix_fmt="yuv444p")
    elif case == "width_48":
        write_h264(path, _frames(12, 32, 48, seed=2))
    elif case == "variable_frame_rate":
        gaps = [33 if index % 2 == 0 else 150 for index in range(len(frames))]
        write_h264(path, frames, timestamps_ms=[sum(gaps[:index]) for index in range(len(frames))])
    elif case == "rotated_90":
        write_h264(path, frames, rotation=90)
    else:
        raise ValueError(f"unknown broken-video case {case!r}; expected one of {list(BROKEN_CASES)}")
    return path


def make_broken_set(out_dir: str | Path, num_good: int = NUM_GOOD) -> Path:
    """Write every case of ``BROKEN_CASES`` plus ``num_good`` ordinary clips, and a manifest (split train)."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in BROKEN_CASES:
        path = _write_case(case, folder)
        rows.append(_row(case, path))
    for index in range(num_good):
        path = write_h264(folder / f"good_{index}.mp4", _frames(20, 48, 64, seed=100 + index))
        rows.append(_row(f"good_{index}", path))
    manifest = folder / "manifest.jsonl"
    write_manifest(manifest, rows)
    return manifest


def _row(clip_id: str, path: Path) -> dict:
    return {
        "clip_id": clip_id,
        "video": path.name,
        "start": None,
        "end": None,
        "captions": [f"a square moves in {clip_id.replace('_', ' ')}"],
        "split": "train",
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder to write the files and manifest.jsonl into")
    parser.add_argument("--num-good", type=int, default=NUM_GOOD, help="ordinary clips to add (default %(default)s)")
    args = parser.parse_args(argv)
    print(make_broken_set(args.out, args.num_good))


if __name__ == "__main__":
    main()
