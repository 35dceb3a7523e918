"""Caption videos (and still images) with a trained model, using the frame sampling and decoding settings it was
evaluated with; an image is captioned as a clip of identical frames.

    python -m simvlg_video.caption --ckpt RUN_DIR_OR_MODEL_DIR VIDEO [VIDEO_OR_FOLDER ...] [--out captions.jsonl]
                                   [num_frames=8 num_beams=3 ...]   (any setting of eval.inference.InferenceConfig)

Prints `path<TAB>caption` per video that decodes, and `path: reason` on stderr for each one that does not; with
--out also writes one JSON object per captioned video. Exit status: 0 when every video was captioned, 1 when any
could not be, 2 for a usage error (no videos, not a model).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from simvlg_video.data.manifest import IMAGE_SUFFIXES, ClipRecord
from simvlg_video.eval.inference import open_model, split_settings
from simvlg_video.eval.predict import predict
from simvlg_video.model.config import ModelDirError
from simvlg_video.world import pick_device

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, required=True, help="a run directory or a model directory")
    parser.add_argument("videos", type=Path, nargs="+", help="video files or folders of videos")
    parser.add_argument("--out", type=Path, help="also write {video, caption} JSON lines here")
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one) | cpu | cuda")
    overrides, rest = split_settings(sys.argv[1:] if argv is None else list(argv))
    args = parser.parse_args(rest)
    videos = expand_videos(args.videos)
    if not videos:
        print(f"error: no video files found in {', '.join(map(str, args.videos))}", file=sys.stderr)
        return 2
    try:
        opened = open_model(args.ckpt, overrides, pick_device(args.device))
    except (ModelDirError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    records = [ClipRecord.for_file(video) for video in videos]
    result = predict(opened.model, records, opened.inference, opened.config.image_size, desc="caption")
    for skipped in result.skipped:
        print(f"{skipped['video']}: {skipped['reason']}", file=sys.stderr)
    if args.out:
        with args.out.open("w", encoding="utf-8") as handle:
            for video, caption in result.captions.items():
                handle.write(json.dumps({"video": video, "caption": caption}, ensure_ascii=False) + "\n")
    for video, caption in result.captions.items():
        print(f"{video}\t{caption}")
    return 1 if result.skipped else 0


if __name__ == "__main__":
    sys.exit(main())
