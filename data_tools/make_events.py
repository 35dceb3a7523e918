"""Write the synthetic event set: H.264 clips where the order, the speed or the moment of events matters, and a
manifest whose attributes state the events (for `eval.event_accuracy`).

    python -m simvlg_video.data_tools.make_events --out data/events [--num-clips 700 --seed 0 --size 96 --fps 8
        --duration 4 --kinds move_stop,two_shapes,colour_move,speed]
    python -m simvlg_video.data_tools.make_events --out data/events_long --kinds long --duration 20 60
    python -m simvlg_video.data_tools.make_events --out data/event_stills --stills

`--stills` writes, instead of videos, each clip's shapes as JPEG stills (each shape alone on the clip's background,
at the clip's first and last frame) with image captions and their shape and colour: scored with `evaluate`, they
say how well an image model names the set's objects (`object_acc`), the eyesight the event captions rest on.

Each split draws its clips from a seed stream of its own ([seed, split]), so test clips are held out by seed: no
test clip shares a seed with a training clip, and the test clips stay the same whatever the training split's size.
Within a split, every variant of every kind (`events.VARIANTS`) appears equally often, give or take one. A keyframe
every `keyframe_interval` seconds (no scene-cut keyframes), so the keyframe sampler's choices are known. The same
arguments always give the same files; the manifest is written last, so a set whose manifest exists is complete.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from simvlg_video.data.manifest import write_manifest
from simvlg_video.data.video_writer import write_video
from simvlg_video.data_tools import event_text, events
from simvlg_video.data_tools.make_shapes import DEFAULT_SPLITS, MANIFEST_NAME, SPLIT_NAMES, split_counts
from simvlg_video.data_tools.shapes import image_captions
from simvlg_video.eval.shape_accuracy import COLOURS, DIRECTIONAL_MOTIONS, SHAPES

SHORT_KINDS = ("move_stop", "two_shapes", "colour_move", "speed")


@dataclass(frozen=True)
class PlannedEventClip:
    """One clip of the set before rendering."""

    clip_id: str
    split: str
    clip: events.EventClip


def make_events_dataset(
    out_dir: str | os.PathLike,
    num_clips: int = 700,
    seed: int = 0,
    kinds: Sequence[str] = SHORT_KINDS,
    height: int = 96,
    width: int = 96,
    fps: float = 8,
    duration: float | Sequence[float] = 4.0,
    window_fraction: float = events.WINDOW_FRACTION,
    keyframe_interval: float = 2.0,
    splits: Sequence[float] = DEFAULT_SPLITS,
    show_progress: bool = True,
) -> Path:
    """Render, encode and index the clips under `out_dir`; returns the manifest's path. `duration`: seconds, or a
    [shortest, longest] range each clip draws its length from."""
    kinds, bounds = tuple(kinds), _duration_bounds(duration)
    _check_arguments(num_clips, kinds, height, width, fps, bounds, keyframe_interval)
    out_dir = Path(out_dir)
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    manifest = out_dir / MANIFEST_NAME
    manifest.unlink(missing_ok=True)  # an interrupted rewrite must not look complete
    gop = str(max(1, round(fps * keyframe_interval)))
    options = {"crf": "18", "x264-params": f"mbtree=0:keyint={gop}:min-keyint={gop}:scenecut=0"}
    rows = []
    planned = plan_event_clips(num_clips, seed, kinds, bounds, window_fraction, splits)
    for item in tqdm(planned, desc="events", disable=not show_progress):
        frames = events.render_event_frames(item.clip, height, width, fps)
        video = f"videos/{item.clip_id}.mp4"
        write_video(
            out_dir / video,
            frames,
            fps,
            codec="libx264",
            encoder_options=options,
            container_format="mp4",
            container_options={"fflags": "+bitexact"},
            atomic=True,
        )
        rows.append(
            {
                "clip_id": item.clip_id,
                "video": video,
                "start": None,
                "end": None,
                "captions": event_text.event_captions(item.clip),
                "split": item.split,
                "num_frames": len(frames),
                "fps": fps,
                "duration": len(frames) / fps,
                "width": width,
                "height": height,
                "attributes": item.clip.attributes(),
            }
        )
    write_manifest(manifest, rows)
    return manifest


def make_event_stills_dataset(
    out_dir: str | os.PathLike,
    num_clips: int = 700,
    seed: int = 0,
    kinds: Sequence[str] = SHORT_KINDS,
    size: int = 96,
    fps: float = 8,
    duration: float | Sequence[float] = 4.0,
    splits: Sequence[float] = DEFAULT_SPLITS,
    show_progress: bool = True,
) -> Path:
    """The stills of the clips `make_events_dataset` makes with the same arguments (`events.object_stills`), as JPEG
    files and a manifest of image lines, each in its clip's split; returns the manifest's path."""
    kinds, bounds = tuple(kinds), _duration_bounds(duration)
    _check_arguments(num_clips, kinds, size, size, fps, bounds, 1.0)
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    manifest = out_dir / MANIFEST_NAME
    manifest.unlink(missing_ok=True)
    rows = []
    planned = plan_event_clips(num_clips, seed, kinds, bounds, splits=splits)
    for item in tqdm(planned, desc="event stills", disable=not show_progress):
        for index, (pixels, shape, colour) in enumerate(events.object_stills(item.clip, size, size, fps)):
            name = f"images/{item.clip_id}_{index}.jpg"
            Image.fromarray(pixels).save(out_dir / name, quality=95)
            rows.append(
                {
                    "clip_id": f"{item.clip_id}_{index}",
                    "image": name,
                    "captions": image_captions(shape, colour),
                    "split": item.split,
                    "attributes": {"shape": shape, "colour": colour, "kind": item.clip.kind},
                }
            )
    write_manifest(manifest, rows)
    return manifest


def _duration_bounds(duration: float | Sequence[float]) -> tuple[float, float]:
    if isinstance(duration, (int, float)):
        return float(duration), float(duration)
    values = [float(value) for value in duration]
    if len(values) != 2 or values[0] > values[1]:
        raise ValueError(f"duration must be seconds or [shortest, longest], got {duration!r}")
    return values[0], values[1]


def _check_arguments(
    num_clips: int,
    kinds: tuple[str, ...],
    height: int,
    width: int,
    fps: float,
    bounds: tuple[float, float],
    keyframe_interval: float,
) -> None:
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    unknown = [kind for kind in kinds if kind not in events.KINDS]
    if not kinds or unknown:
        raise ValueError(f"kinds must be some of {events.KINDS}, got {list(kinds)}")
    if height < 8 or width < 8 or height % 2 or width % 2:
        raise ValueError(f"height and width must be even (yuv420p) and >= 8, got height={height} width={width}")
    if fps <= 0 or bounds[0] <= 0 or round(fps * bounds[0]) < 2:
        raise ValueError(f"fps * duration must give at least 2 frames, got fps={fps} duration={bounds}")
    if keyframe_interval <= 0:
        raise ValueError(f"keyframe_interval must be > 0 seconds, got {keyframe_interval}")


def plan_event_clips(
    num_clips: int,
    seed: int = 0,
    kinds: Sequence[str] = SHORT_KINDS,
    duration: tuple[float, float] = (4.0, 4.0),
    window_fraction: float = events.WINDOW_FRACTION,
    splits: Sequence[float] = DEFAULT_SPLITS,
) -> list[PlannedEventClip]:
    """The set's clips, decided by the arguments alone (not by frame size, fps or codec); see the module doc."""
    if len(splits) != len(SPLIT_NAMES) or min(splits) < 0 or not math.isclose(sum(splits), 1.0, abs_tol=1e-6):
        raise ValueError(f"splits must be 3 non-negative fractions (train, val, test) summing to 1, got {splits}")
    variants = [(kind, variant) for kind in kinds for variant in events.VARIANTS[kind]]
    planned = []
    for split_index, (split, count) in enumerate(zip(SPLIT_NAMES, split_counts(num_clips, splits))):
        rng = np.random.default_rng([seed, split_index])
        order: list[int] = []
        for index in range(count):
            if not order:  # every variant once per round, in a fresh random order
                order = list(rng.permutation(len(variants)))
            kind, variant = variants[order.pop()]
            length = float(rng.uniform(*duration)) if duration[1] > duration[0] else duration[0]
            clip = draw_clip(rng, kind, variant, length, window_fraction)
            planned.append(PlannedEventClip(f"events_{split}_{index:05d}", split, clip))
    return planned


def draw_clip(
    rng: np.random.Generator, kind: str, variant: str, duration: float, window_fraction: float = events.WINDOW_FRACTION
) -> events.EventClip:
    """One clip of `kind` and `variant` with a random object (or two) and motion."""
    shape, colour = SHAPES[int(rng.integers(len(SHAPES)))], COLOURS[int(rng.integers(len(COLOURS)))]
    if kind == "two_shapes":
        other_shape = [s for s in SHAPES if s != shape][int(rng.integers(len(SHAPES) - 1))]
        other_colour = [c for c in COLOURS if c != colour][int(rng.integers(len(COLOURS) - 1))]
        return events.two_shapes_clip(rng, (shape, colour), (other_shape, other_colour), variant, duration)
    if kind == "speed":
        motion = events.LINE_MOTIONS[int(rng.integers(len(events.LINE_MOTIONS)))]
        return events.speed_clip(rng, shape, colour, motion, variant, duration)
    motion = DIRECTIONAL_MOTIONS[int(rng.integers(len(DIRECTIONAL_MOTIONS)))]
    if kind == "long":
        return events.long_clip(rng, shape, colour, motion, duration, window_fraction)
    make = events.move_stop_clip if kind == "move_stop" else events.colour_move_clip
    return make(rng, shape, colour, motion, variant, duration)


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m simvlg_video.data_tools.make_events",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (videos/ and manifest.jsonl)")
    parser.add_argument("--num-clips", type=int, default=700)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default=",".join(SHORT_KINDS), help=f"comma-separated, of {events.KINDS}")
    parser.add_argument("--size", type=int, default=96, help="frame height and width, even")
    parser.add_argument("--fps", type=float, default=8)
    parser.add_argument("--duration", type=float, nargs="+", default=[4.0], help="seconds, or shortest longest")
    parser.add_argument(
        "--window-fraction", type=float, default=events.WINDOW_FRACTION, help="share of a long clip its event fills"
    )
    parser.add_argument("--stills", action="store_true", help="write each clip's shapes as stills, not videos")
    args = parser.parse_args(argv)
    fps = int(args.fps) if float(args.fps).is_integer() else args.fps
    duration = args.duration[0] if len(args.duration) == 1 else args.duration
    kinds = args.kinds.split(",")
    try:
        if args.stills:
            manifest = make_event_stills_dataset(args.out, args.num_clips, args.seed, kinds, args.size, fps, duration)
        else:
            manifest = make_events_dataset(
                args.out,
                args.num_clips,
                args.seed,
                kinds,
                args.size,
                args.size,
                fps,
                duration,
                args.window_fraction,
            )
    except ValueError as error:
        parser.error(str(error))
    print(f"wrote {manifest}")
    return manifest


if __name__ == "__main__":
    main()
