"""Write the synthetic motion video set: encoded clips plus a manifest.jsonl in the project's manifest schema.

    python -m simvlg_video.data_tools.make_shapes --out data/shapes [--num-clips 700 --seed 0 --size 96
        --fps 8 --duration 2 --codec libx264 --container mp4]

Every motion appears in the same number of clips (give or take one) and is split train/val/test on its own,
so each split sees every motion. The same arguments always give the same manifest and the same decoded frames.
The manifest is written last, through a temporary file, so a dataset whose manifest exists is complete.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

from simvlg_video.data.video_writer import write_video
from simvlg_video.data_tools.shapes import (
    COLOURS,
    MOTIONS,
    SHAPES,
    ClipSpec,
    render_frames,
    sample_clip_spec,
    video_captions,
)

MANIFEST_NAME = "manifest.jsonl"
SPLIT_NAMES = ("train", "val", "test")
DEFAULT_SPLITS = (0.8, 0.1, 0.1)
SUPPORTED_CODECS = {"libx264": "mp4", "libvpx-vp9": "webm", "libvpx": "webm"}  # codec -> container
# Near-transparent quality, so decoded frames look like the rendered ones even at 32x32. x264's macroblock-tree
# rate control gave different bitstreams for identical input now and then (x264 in FFmpeg 8 via PyAV 18), so it
# is off: the same frames must always encode to the same file.
_ENCODER_OPTIONS = {
    "libx264": {"crf": "18", "x264-params": "mbtree=0"},
    "libvpx-vp9": {"crf": "20", "b": "0"},
    "libvpx": {"crf": "8", "b": "2M"},
}


def make_shapes_dataset(
    out_dir: str | os.PathLike,
    num_clips: int = 700,
    seed: int = 0,
    height: int = 96,
    width: int = 96,
    fps: float = 8,
    duration: float = 2.0,
    codec: str = "libx264",
    container: str = "mp4",
    splits: Sequence[float] = DEFAULT_SPLITS,
    show_progress: bool = True,
) -> Path:
    """Render, encode and index `num_clips` clips under `out_dir`; returns the path of the manifest."""
    _check_arguments(num_clips, height, width, fps, duration, codec, container, splits)
    out_dir = Path(out_dir)
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / MANIFEST_NAME
    manifest_path.unlink(missing_ok=True)  # an interrupted rewrite must not look complete
    num_frames = round(fps * duration)
    rows = []
    for clip in tqdm(plan_clips(num_clips, seed, splits), desc="shapes", disable=not show_progress):
        spec = clip.spec
        video = f"videos/{clip.clip_id}.{container}"
        # bitexact: no random segment id or encoder version in the file, so equal frames give equal bytes
        write_video(
            out_dir / video,
            render_frames(spec, height, width, num_frames),
            fps,
            codec=codec,
            encoder_options=_ENCODER_OPTIONS[codec],
            container_format=container,
            container_options={"fflags": "+bitexact"},
            atomic=True,
        )
        rows.append(
            {
                "clip_id": clip.clip_id,
                "video": video,
                "start": None,
                "end": None,
                "captions": video_captions(spec.shape, spec.colour, spec.motion),
                "split": clip.split,
                "num_frames": num_frames,
                "fps": fps,
                "duration": num_frames / fps,
                "width": width,
                "height": height,
                "attributes": {"shape": spec.shape, "colour": spec.colour, "motion": spec.motion},
            }
        )
    partial = manifest_path.with_name(MANIFEST_NAME + ".partial")
    partial.write_text("".join(json.dumps(row) + "\n" for row in rows))
    os.replace(partial, manifest_path)
    return manifest_path


def _check_arguments(
    num_clips: int,
    height: int,
    width: int,
    fps: float,
    duration: float,
    codec: str,
    container: str,
    splits: Sequence[float],
) -> None:
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    if height < 8 or width < 8 or height % 2 or width % 2:
        raise ValueError(f"height and width must be even (yuv420p) and >= 8, got height={height} width={width}")
    if fps <= 0 or duration <= 0 or round(fps * duration) < 2:
        raise ValueError(f"fps * duration must give at least 2 frames, got fps={fps} duration={duration}")
    if codec not in SUPPORTED_CODECS:
        raise ValueError(f"unsupported codec {codec!r}; expected one of {sorted(SUPPORTED_CODECS)}")
    if SUPPORTED_CODECS[codec] != container:
        raise ValueError(f"codec {codec!r} goes in container {SUPPORTED_CODECS[codec]!r}, got {container!r}")
    if codec not in av.codecs_available:
        raise ValueError(f"this PyAV/FFmpeg build has no {codec!r} encoder")
    if len(splits) != len(SPLIT_NAMES) or min(splits) < 0 or not math.isclose(sum(splits), 1.0, abs_tol=1e-6):
        raise ValueError(f"splits must be 3 non-negative fractions (train, val, test) summing to 1, got {splits}")
    if splits[0] <= 0:
        raise ValueError(f"the train fraction must be positive, got splits={splits}")


@dataclass(frozen=True)
class PlannedClip:
    """One clip of the dataset before rendering: its id, split and geometry."""

    clip_id: str
    split: str
    spec: ClipSpec


def plan_clips(num_clips: int, seed: int = 0, splits: Sequence[float] = DEFAULT_SPLITS) -> list[PlannedClip]:
    """The dataset's clips, decided by the seed alone (independent of frame size, fps and codec)."""
    rng = np.random.default_rng(seed)
    attributes = balanced_attributes(rng, num_clips)
    split_names = assign_splits(rng, [motion for _, _, motion in attributes], splits)
    return [
        PlannedClip(f"shapes_{index:05d}", split, sample_clip_spec(rng, shape, colour, motion))
        for index, ((shape, colour, motion), split) in enumerate(zip(attributes, split_names))
    ]


def balanced_attributes(rng: np.random.Generator, num_clips: int) -> list[tuple[str, str, str]]:
    """(shape, colour, motion) per clip: every run of 7 clips has each motion once; per motion, each
    shape x colour pair appears once before any repeats."""
    objects = list(product(SHAPES, COLOURS))
    attributes: list[tuple[str, str, str]] = []
    while len(attributes) < num_clips:
        object_order = {motion: rng.permutation(len(objects)) for motion in MOTIONS}
        for round_index in range(len(objects)):
            for motion_index in rng.permutation(len(MOTIONS)):
                motion = MOTIONS[motion_index]
                shape, colour = objects[object_order[motion][round_index]]
                attributes.append((shape, colour, motion))
    return attributes[:num_clips]


def split_counts(total: int, fractions: Sequence[float]) -> list[int]:
    """Clips per split (largest remainder), giving every split with a positive fraction at least one clip
    when there are enough clips to go round."""
    raw = [total * fraction for fraction in fractions]
    counts = [math.floor(value) for value in raw]
    by_remainder = sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True)
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    wanted = [i for i, fraction in enumerate(fractions) if fraction > 0]
    if total >= len(wanted):
        for i in wanted:
            if counts[i] == 0:
                counts[counts.index(max(counts))] -= 1
                counts[i] = 1
    return counts


def assign_splits(rng: np.random.Generator, motions: Sequence[str], fractions: Sequence[float]) -> list[str]:
    """Split name per clip, stratified by motion so that every split sees every motion."""
    names = [""] * len(motions)
    for motion in MOTIONS:
        indices = [i for i, m in enumerate(motions) if m == motion]
        shuffled = [indices[j] for j in rng.permutation(len(indices))]
        start = 0
        for name, count in zip(SPLIT_NAMES, split_counts(len(indices), fractions)):
            for i in shuffled[start : start + count]:
                names[i] = name
            start += count
    return names


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m simvlg_video.data_tools.make_shapes",
        description="Generate the synthetic motion video set (shapes that move).",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (videos/ and manifest.jsonl)")
    parser.add_argument("--num-clips", type=int, default=700)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=96, help="frame height and width, even")
    parser.add_argument("--height", type=int, help="overrides --size")
    parser.add_argument("--width", type=int, help="overrides --size")
    parser.add_argument("--fps", type=float, default=8)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds")
    parser.add_argument("--codec", default="libx264", choices=sorted(SUPPORTED_CODECS))
    parser.add_argument("--container", help="defaults to the codec's container (mp4 or webm)")
    args = parser.parse_args(argv)
    fps = int(args.fps) if float(args.fps).is_integer() else args.fps
    options = dict(
        num_clips=args.num_clips,
        height=args.height if args.height is not None else args.size,
        width=args.width if args.width is not None else args.size,
        fps=fps,
        duration=args.duration,
        codec=args.codec,
        container=args.container or SUPPORTED_CODECS[args.codec],
    )
    try:
        _check_arguments(**options, splits=DEFAULT_SPLITS)
    except ValueError as error:
        parser.error(str(error))
    manifest = make_shapes_dataset(args.out, seed=args.seed, **options)
    per_split = Counter(json.loads(line)["split"] for line in manifest.read_text().splitlines())
    summary = ", ".join(f"{name} {per_split[name]}" for name in SPLIT_NAMES)
    print(f"wrote {sum(per_split.values())} clips ({summary}) to {manifest}")


if __name__ == "__main__":
    main()
