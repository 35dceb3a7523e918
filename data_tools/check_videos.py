"""Probe every video a manifest references (and decode every image); write the manifest of the clips that can be
read, and a report.

    python -m simvlg_video.data_tools.check_videos ROOT/manifest.jsonl [--out FILE] [--report FILE]
        [--workers N] [--backend auto] [--decode]

Each distinct video is probed once (in parallel, with a progress bar) for its frame count and frame rate. A clip is
kept when its video exists, opens, and its [start, end] window holds at least one frame; the kept rows get the
probed ``num_frames`` and ``fps``, so training does not probe again. ``--decode`` also decodes each video's first and
last frame, which catches files that open but whose frame count is wrong (those can hang or crash a reader
mid-training); it is slower. Defaults: ROOT/manifest.checked.jsonl and ROOT/manifest.check_report.json (beside the
input, named after it).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from simvlg_video.data.decode import VideoDecodeError, probe_video, read_frames
from simvlg_video.data.images import read_image
from simvlg_video.data.manifest import ClipRecord, ManifestError, read_manifest, write_manifest
from simvlg_video.data.sampling import ClipWindowError, frame_window


@dataclass(frozen=True)
class VideoCheck:
    """Outcome for one video file: ``status`` is "ok", "missing" or "unreadable" (then ``reason`` says why)."""

    path: str
    status: str
    reason: str = ""
    num_frames: int = 0
    fps: float = 0.0


def check_video(path: str, backend: str = "auto", decode: bool = False, is_image: bool = False) -> VideoCheck:
    """Probe one file (and with ``decode`` read its first and last frame; an image is always decoded); failures
    become a status, not an error."""
    if not os.path.exists(path):
        return VideoCheck(path, "missing", "file not found")
    try:
        if is_image:
            read_image(path)
            return VideoCheck(path, "ok", num_frames=1)
        info = probe_video(path, backend)
        if info.num_frames < 1:
            return VideoCheck(path, "unreadable", "the container reports no frames")
        if decode:
            read_frames(path, sorted({0, info.num_frames - 1}), backend)
    except VideoDecodeError as error:
        return VideoCheck(path, "unreadable", error.reason)
    return VideoCheck(path, "ok", num_frames=info.num_frames, fps=info.fps)


def check_videos(
    paths: Sequence[str],
    workers: int,
    backend: str = "auto",
    decode: bool = False,
    show_progress: bool = True,
    images: frozenset[str] = frozenset(),
) -> dict[str, VideoCheck]:
    """``check_video`` for every path (those in ``images`` as still images), in ``workers`` processes (0: in this
    process)."""
    progress = tqdm(total=len(paths), desc="check videos", unit="video", disable=not show_progress, dynamic_ncols=True)
    results: dict[str, VideoCheck] = {}
    with progress:
        if workers == 0:
            for path in paths:
                results[path] = check_video(path, backend, decode, path in images)
                progress.update()
            return results
        # spawn: workers start clean instead of inheriting the caller's threads and open decoders
        context = multiprocessing.get_context("spawn")
        chunk = max(1, min(64, len(paths) // (workers * 8)))
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            for result in pool.map(
                check_video,
                paths,
                [backend] * len(paths),
                [decode] * len(paths),
                [path in images for path in paths],
                chunksize=chunk,
            ):
                results[result.path] = result
                progress.update()
    return results


def window_problem(record: ClipRecord, video: VideoCheck) -> str | None:
    """Why the clip's [start, end] window holds no frame of the video, or None when it holds at least one (the
    training loader's own rule, so a window kept here is one it can sample from)."""
    try:
        frame_window(video.num_frames, video.fps, record.start, record.end)
    except ClipWindowError as error:
        return f"{error} ({video.num_frames / video.fps:.2f} s)"
    return None


def filter_manifest(records: Sequence[ClipRecord], videos: dict[str, VideoCheck], out: Path) -> tuple[list[dict], dict]:
    """Rows to keep (with probed metadata and video paths valid from ``out``'s folder) and the report."""
    kept: list[dict] = []
    problems: dict[str, dict[str, dict]] = {"missing": {}, "unreadable": {}}
    empty_windows: list[dict] = []
    per_split: dict[str, dict[str, int]] = {}
    for record in records:
        video = videos[str(record.video_path)]
        counts = per_split.setdefault(record.split, {"clips": 0, "kept": 0})
        counts["clips"] += 1
        if video.status != "ok":
            entry = problems[video.status].setdefault(
                video.path, {"video": video.path, "reason": video.reason, "clip_ids": []}
            )
            entry["clip_ids"].append(record.clip_id)
            continue
        problem = None if record.is_image else window_problem(record, video)
        if problem:
            empty_windows.append({"clip_id": record.clip_id, "video": video.path, "reason": problem})
            continue
        row = record.to_dict()
        if not record.is_image:
            row.update(num_frames=video.num_frames, fps=video.fps, duration=video.num_frames / video.fps)
        if not Path(record.video).is_absolute():
            row["image" if record.is_image else "video"] = Path(
                os.path.relpath(record.video_path, os.path.abspath(out.parent))
            ).as_posix()
        kept.append(row)
        counts["kept"] += 1
    report = {
        "clips": len(records),
        "kept_clips": len(kept),
        "videos": len(videos),
        "missing_videos": len(problems["missing"]),
        "unreadable_videos": len(problems["unreadable"]),
        "empty_windows": len(empty_windows),
        "per_split": per_split,
        "missing": list(problems["missing"].values()),
        "unreadable": list(problems["unreadable"].values()),
        "empty_window_clips": empty_windows,
    }
    return kept, report


def default_output(manifest: Path, suffix: str) -> Path:
    """``<folder>/<stem>.<suffix>`` beside the input manifest, e.g. manifest.checked.jsonl."""
    return manifest.with_name(f"{manifest.stem}.{suffix}")


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m simvlg_video.data_tools.check_videos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("manifest", type=Path, help="manifest written by simvlg_video.data_tools.convert")
    parser.add_argument("--out", type=Path, help="filtered manifest (default: <manifest stem>.checked.jsonl)")
    parser.add_argument("--report", type=Path, help="JSON report (default: <manifest stem>.check_report.json)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (0: probe in this one)")
    parser.add_argument("--backend", default="auto", help="decoder backend, as data.backend (default: auto)")
    parser.add_argument("--decode", action="store_true", help="also decode each video's first and last frame")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}")
    out = args.out or default_output(args.manifest, "checked.jsonl")
    report_path = args.report or default_output(args.manifest, "check_report.json")
    if out.resolve() == args.manifest.resolve():  # also through symbolic links
        sys.exit(f"error: --out {out} would overwrite the manifest being checked")
    try:
        records = read_manifest(args.manifest)
    except ManifestError as error:
        sys.exit(f"error: {error}")
    paths = sorted({str(record.video_path) for record in records})
    images = frozenset(str(record.video_path) for record in records if record.is_image)
    videos = check_videos(paths, args.workers, args.backend, args.decode, show_progress=not args.quiet, images=images)
    kept, report = filter_manifest(records, videos, out)
    report = {"manifest": str(args.manifest), "checked_manifest": str(out), **report}
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(
        f"{report['kept_clips']} of {report['clips']} clips kept; {report['missing_videos']} missing and "
        f"{report['unreadable_videos']} unreadable videos of {report['videos']}, {report['empty_windows']} clips "
        f"with an empty window. Report: {report_path}"
    )
    if not kept:
        sys.exit(f"error: no readable clip in {args.manifest}; nothing written to {out}")
    write_manifest(out, kept)
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
