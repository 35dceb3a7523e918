"""Caption videos (and still images) with a trained model, using the frame sampling and decoding settings it was
evaluated with; an image is captioned as a clip of identical frames.

    python -m simvlg_video.caption --ckpt RUN_DIR_OR_MODEL_DIR VIDEO [VIDEO_OR_FOLDER ...] [--out captions.jsonl]
                                   [data.num_frames=8 eval.num_beams=3 sampler=uniform ...]
    torchrun --nproc_per_node 8 -m simvlg_video.caption --ckpt RUN_DIR FOLDER --out captions.jsonl

Prints `path<TAB>caption` per video that decodes, and `path: reason` on stderr for each one that does not; with
--out also writes one JSON object per captioned video, in the order the files were given. Under torchrun the files
are split over the processes and rank 0 prints and writes every caption.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from simvlg_video.configs.commands import command_parser, open_for_command, split_overrides
from simvlg_video.data.manifest import IMAGE_SUFFIXES, ClipRecord
from simvlg_video.errors import OK, SOME_FAILED, UsageError, exit_status
from simvlg_video.eval.predict import predict
from simvlg_video.world import World, gather, init_world, shutdown

VIDEO_SUFFIXES = {".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".ts", ".3gp", ".flv", ".gif"}


def expand_videos(paths: list[Path]) -> list[Path]:
    """Files as given (existing or not: a missing one is reported with the others); folders expanded, recursively
    and sorted, to the video and image files inside them."""
    videos: list[Path] = []
    for path in paths:
        if path.is_dir():
            suffixes = VIDEO_SUFFIXES | set(IMAGE_SUFFIXES)
            videos.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in suffixes))
        else:
            videos.append(path)
    return videos


def caption(
    ckpt: Path, paths: list[Path], overrides: Sequence[str] = (), out: Path | None = None, world: World = World()
) -> int:
    """Caption every video and image of `paths` with the model of `ckpt`; prints the captions in input order (and
    writes them to `out`), names each file that could not be captioned; returns SOME_FAILED when there was one.
    Under torchrun each rank captions every world_size-th file and rank 0 prints and writes them all."""
    videos = expand_videos(paths)
    if not videos:
        raise UsageError(f"no video files found in {', '.join(map(str, paths))}")
    opened = open_for_command("caption", ckpt, overrides, world).opened
    records = [ClipRecord.for_file(video) for video in videos]
    mine = records[world.rank :: world.world_size]
    result = predict(opened.model, mine, opened.inference, opened.config.image_size, desc="caption") if mine else None
    captions: dict[str, str] = {}
    skipped: list[dict] = []
    for part in filter(None, gather(result, world)):  # None: a rank left without files
        captions.update(part.captions)
        skipped.extend(part.skipped)
    if world.is_main:
        for entry in skipped:
            print(f"{entry['video']}: {entry['reason']}", file=sys.stderr)
        ordered = [(r.clip_id, captions[r.clip_id]) for r in records if r.clip_id in captions]
        ordered = list(dict(ordered).items())  # a file given twice is captioned and listed once
        if out:
            with out.open("w", encoding="utf-8") as handle:
                for video, text in ordered:
                    handle.write(json.dumps({"video": video, "caption": text}, ensure_ascii=False) + "\n")
        for video, text in ordered:
            print(f"{video}\t{text}")
    return SOME_FAILED if skipped else OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = command_parser(__doc__, "caption")
    parser.add_argument("--ckpt", type=Path, required=True, help="a run directory or a model directory")
    parser.add_argument("videos", type=Path, nargs="+", help="video files or folders of videos")
    parser.add_argument("--out", type=Path, help="also write {video, caption} JSON lines here")
    overrides, rest = split_overrides(sys.argv[1:] if argv is None else list(argv), parser)
    args = parser.parse_args(rest)
    world = init_world()  # under torchrun: the files are split over the ranks, rank 0 prints and writes
    try:
        return exit_status(lambda: caption(args.ckpt, args.videos, overrides, args.out, world))
    finally:
        shutdown(world)


if __name__ == "__main__":
    sys.exit(main())
