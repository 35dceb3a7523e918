"""Caption videos with a run's exported model, using the frame sampling and decoding settings of that run.

    python -m simvlg_video.caption --ckpt RUN_DIR VIDEO [VIDEO_OR_FOLDER ...] [--out captions.jsonl]

Prints `path<TAB>caption` per video; with --out also writes one JSON object per line. Videos that fail to decode are
reported and skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from simvlg_video.data.manifest import ClipRecord
from simvlg_video.eval.predict import predict
from simvlg_video.run_dir import eval_settings, load_run_config, load_run_model
from simvlg_video.runtime import pick_device

VIDEO_SUFFIXES = {".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".ts", ".3gp", ".flv", ".gif"}


def expand_videos(paths: list[Path]) -> list[Path]:
    """Files as given; folders expanded (recursively, sorted) to the video files inside them."""
    videos: list[Path] = []
    for path in paths:
        if path.is_dir():
            videos.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES))
        else:
            videos.append(path)
    return videos


def as_record(path: Path) -> ClipRecord:
    return ClipRecord(clip_id=str(path), video=str(path), video_path=path.resolve(), start=None, end=None,
                      captions=(), split="test")


def main(argv: list[str] | None = None) -> dict[str, str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, required=True, help="run directory written by simvlg_video.adapt")
    parser.add_argument("videos", type=Path, nargs="+", help="video files or folders of videos")
    parser.add_argument("--out", type=Path, help="also write {video, caption} JSON lines here")
    args = parser.parse_args(argv)
    cfg = load_run_config(args.ckpt)
    videos = expand_videos(args.videos)
    if not videos:
        raise SystemExit(f"error: no video files found in {[str(p) for p in args.videos]}")
    model, model_cfg = load_run_model(args.ckpt)
    model.to(pick_device(cfg.device))
    result = predict(model, [as_record(v) for v in videos], desc="caption", **eval_settings(cfg, model_cfg))
    for skipped in result.skipped:
        print(f"skipped {skipped['video']}: {skipped['reason']}", file=sys.stderr)
    if args.out:
        with args.out.open("w", encoding="utf-8") as handle:
            for video, caption in result.captions.items():
                handle.write(json.dumps({"video": video, "caption": caption}, ensure_ascii=False) + "\n")
    for video, caption in result.captions.items():
        print(f"{video}\t{caption}")
    return result.captions


if __name__ == "__main__":
    main()
