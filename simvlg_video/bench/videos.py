"""Benchmark videos made from real footage: long-GOP and full-HD H.264 files, plus a probed manifest.

    python -m simvlg_video.bench.videos --source bigbuckbunny.mp4 --out .cache/bench_videos [--seconds 40]
        [--samples real1.mp4 real2.mp4 ...]

Synthetic pictures compress (and decode) far faster than camera footage, so the files are built from a real
clip: its frames played forwards and backwards until the length is reached, scaled to the target size, encoded by
libx264 with B-frames. Written: ``longgop_720p.mp4`` (a keyframe every 250 frames, the ActivityNet case),
``hd_1080p.mp4`` (8 s, x264's default keyframe spacing) and ``tagged_bt709_720p.mp4`` (short, colour matrix
tagged BT.709, for the GPU colour check), copies of ``--samples`` into ``samples/``, and ``manifest.jsonl`` listing
the samples, the long-GOP and the 1080p file, probed (see ``probe.py``). Writing them needs PyAV; the loader
benchmark reads the probed manifest and never probes, so it runs where PyAV is not installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import av

from simvlg_video.data.manifest import ClipRecord, write_manifest
from simvlg_video.data.probe import probe_file
from simvlg_video.data.video_writer import write_video

FPS = 25


def source_frames(source: Path, width: int, height: int) -> list[av.VideoFrame]:
    """Every frame of ``source`` scaled to width x height (yuv420p), ready to encode."""
    with av.open(str(source)) as container:
        return [
            frame.reformat(width=width, height=height, format="yuv420p")
            for frame in container.decode(container.streams.video[0])
        ]


def encode(frames: list[av.VideoFrame], count: int, path: Path, gop: int | None, bt709: bool = False) -> Path:
    """``count`` frames (the source played back and forth) into an H.264 mp4 at FPS, a keyframe every ``gop``."""
    cycle = frames + frames[-2:0:-1] if len(frames) > 2 else frames
    params = ["bframes=3", "scenecut=0"] if gop else ["bframes=3"]
    if gop:
        params += [f"keyint={gop}", f"min-keyint={gop}"]
    if bt709:
        params += ["colormatrix=bt709", "colorprim=bt709", "transfer=bt709"]
    options = {"preset": "veryfast", "crf": "23", "x264-params": ":".join(params)}
    if gop:
        # FFmpeg's own settings win over x264-params: fixed GOP length, no extra keyframes at scene changes
        options.update({"g": str(gop), "sc_threshold": "0"})

    def played() -> Iterator[av.VideoFrame]:
        for index in range(count):
            frame = cycle[index % len(cycle)]
            frame.pts, frame.time_base = index, Fraction(1, FPS)
            frame.pict_type = av.video.frame.PictureType.NONE  # the source's keyframe type would force one here
            yield frame

    write_video(path, played(), FPS, encoder_options=options)
    return path


def make_bench_videos(source: Path, out_dir: Path, seconds: float = 40.0, samples: Sequence[Path] = ()) -> Path:
    """Write the benchmark files and their probed manifest into ``out_dir``; returns the manifest path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "samples").mkdir(exist_ok=True)
    copies = [Path(shutil.copyfile(sample, out_dir / "samples" / Path(sample).name)) for sample in samples]
    hd720 = source_frames(source, 1280, 720)
    encode(hd720[:50], 50, out_dir / "tagged_bt709_720p.mp4", gop=None, bt709=True)
    files = [
        *copies,
        encode(hd720, int(seconds * FPS), out_dir / "longgop_720p.mp4", gop=250),
        encode(source_frames(source, 1920, 1080), 8 * FPS, out_dir / "hd_1080p.mp4", gop=None),
    ]
    records = []
    for path in files:
        record = ClipRecord(
            clip_id=path.stem,
            video=str(path.relative_to(out_dir)),
            video_path=path,
            start=None,
            end=None,
            captions=("benchmark clip",),
            split="test",
        )
        records.append(dataclasses.replace(record, **probe_file(path).record_fields()))
    manifest = out_dir / "manifest.jsonl"
    write_manifest(manifest, records)
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True, help="a real video to take the frames from")
    parser.add_argument("--out", type=Path, required=True, help="folder for the files and manifest.jsonl")
    parser.add_argument("--seconds", type=float, default=40.0, help="length of the long-GOP file (default 40)")
    parser.add_argument("--samples", type=Path, nargs="*", default=[], help="real files to copy and list too")
    args = parser.parse_args(argv)
    print(make_bench_videos(args.source, args.out, args.seconds, args.samples))


if __name__ == "__main__":
    main()
