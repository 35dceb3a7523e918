"""Probe every video a manifest references (and decode every image); write the manifest of the clips that can be
read, and a report.

    python -m simvlg_video.data_tools.check_videos ROOT/manifest.jsonl [--out FILE] [--report FILE]
        [--workers N] [--backend auto] [--decode] [--timeout S] [--memory-gib G] [--max-pixels N]

Each distinct video is probed once (in parallel, with a progress bar) for its frame count and frame rate. A clip is
kept when its video exists, opens, and its [start, end] window holds at least one frame; the kept rows get the
probed ``num_frames`` and ``fps``, so training does not probe again. ``--decode`` also decodes each video's first and
last frame, which catches files that open but whose frame count is wrong (those can hang or crash a reader
mid-training); it is slower. Defaults: ROOT/manifest.checked.jsonl and ROOT/manifest.check_report.json (beside the
input, named after it).

The files are untrusted: each is checked in a decode process of its own worker (``--workers`` of them) with a time
limit, a memory limit and a pixel limit (the training loader's, ``data.decode_timeout``, ``data.decode_memory_gib``,
``data.max_pixels``). A file that hangs is killed and reported, one that crashes its decoder is reported, one over
a limit is reported; the others are still checked. Each result is appended to a journal beside the report
(``<report>.journal.jsonl``) as it comes: a check that is stopped (killed, Ctrl-C, a reboot) continues where it was
when the same command is run again, and rechecks only files changed since. The journal is removed once the report
is written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from simvlg_video.data.decode import VideoDecodeError, probe_video, read_frames
from simvlg_video.data.decode_guard import map_guarded
from simvlg_video.data.images import read_image
from simvlg_video.data.limits import DEFAULT_DECODE_MEMORY_GIB, DEFAULT_DECODE_TIMEOUT, DEFAULT_MAX_PIXELS
from simvlg_video.data.manifest import ClipRecord, read_manifest, write_manifest
from simvlg_video.data.sampling import ClipWindowError, frame_window
from simvlg_video.errors import EXIT_STATUS_HELP, UserError, exit_status

STOPPED = 130  # the exit status of a check stopped with Ctrl-C (SIGINT), which the same command continues

STATUSES = ("ok", "missing", "unreadable")


@dataclass(frozen=True)
class VideoCheck:
    """Outcome for one video file: ``status`` is "ok", "missing" or "unreadable" (then ``reason`` says why)."""

    path: str
    status: str
    reason: str = ""
    num_frames: int = 0
    fps: float = 0.0


@dataclass(frozen=True)
class CheckOptions:
    """What decides a file's outcome besides the file: a journal written with other options is not reused."""

    backend: str = "auto"
    decode: bool = False
    timeout: float = DEFAULT_DECODE_TIMEOUT
    memory_gib: float | None = DEFAULT_DECODE_MEMORY_GIB
    max_pixels: int | None = DEFAULT_MAX_PIXELS


def check_video(
    path: str,
    backend: str = "auto",
    decode: bool = False,
    is_image: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> VideoCheck:
    """Probe one file (and with ``decode`` read its first and last frame; an image is always decoded); failures
    become a status, not an error. Runs in a decode process (see :func:`check_videos`)."""
    if not os.path.exists(path):
        return VideoCheck(path, "missing", "file not found")
    try:
        if is_image:
            read_image(path, max_pixels)
            return VideoCheck(path, "ok", num_frames=1)
        info = probe_video(path, backend, max_pixels)
        if info.num_frames < 1:
            return VideoCheck(path, "unreadable", "the container reports no frames")
        if decode:
            read_frames(path, sorted({0, info.num_frames - 1}), backend, max_pixels)
    except VideoDecodeError as error:
        return VideoCheck(path, "unreadable", error.reason)
    return VideoCheck(path, "ok", num_frames=info.num_frames, fps=info.fps)


class CheckJournal:
    """The results of a check so far, one JSON line per file appended as it comes, so a stopped check continues.

    The first line holds the options; a journal written with other options starts over. Each file's line holds
    its size and modification time, and a file changed since is checked again. A line cut short by a kill is
    ignored (that file is checked again).
    """

    def __init__(self, path: Path, options: CheckOptions) -> None:
        self.path = path
        self.options = asdict(options)

    def load(self, paths: Sequence[str]) -> dict[str, VideoCheck]:
        """The journal's results for `paths` whose file is unchanged; a journal of other options is emptied."""
        found: dict[str, VideoCheck] = {}
        if self.path.is_file():
            lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
            if lines and _json_or_none(lines[0]) == {"options": self.options}:
                wanted = set(paths)
                for line in lines[1:]:
                    check = _journal_entry(_json_or_none(line))
                    if check is not None and check[0].path in wanted and check[1] == _file_stamp(check[0].path):
                        found[check[0].path] = check[0]
                self._end_line()
                return found
            print(f"{self.path} was written with other options; checking every file again", file=sys.stderr)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"options": self.options}) + "\n", encoding="utf-8")
        return found

    def append(self, check: VideoCheck) -> None:
        line = json.dumps({**asdict(check), "stamp": _file_stamp(check.path)}, ensure_ascii=False) + "\n"
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def _end_line(self) -> None:
        """End a last line cut short by a kill, so the next result starts a line of its own."""
        with self.path.open("rb") as handle:
            handle.seek(-1, os.SEEK_END)
            cut = handle.read(1) != b"\n"
        if cut:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write("\n")


def _json_or_none(line: str):
    try:
        return json.loads(line)
    except ValueError:
        return None


def _journal_entry(entry) -> tuple[VideoCheck, list | None] | None:
    """(the check, the file's stamp then) of a journal line, or None when the line is not one."""
    if not isinstance(entry, dict) or entry.get("status") not in STATUSES or not isinstance(entry.get("path"), str):
        return None
    try:
        check = VideoCheck(
            entry["path"],
            entry["status"],
            str(entry.get("reason", "")),
            int(entry.get("num_frames", 0)),
            float(entry.get("fps", 0.0)),
        )
    except (TypeError, ValueError):
        return None
    return check, entry.get("stamp")


def _file_stamp(path: str) -> list[int] | None:
    """[size, modification time in ns] of a file (None: it is not there), to see whether it changed."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return [status.st_size, status.st_mtime_ns]


def check_videos(
    paths: Sequence[str],
    workers: int,
    options: CheckOptions = CheckOptions(),
    show_progress: bool = True,
    images: frozenset[str] = frozenset(),
    journal: CheckJournal | None = None,
    check: Callable[..., VideoCheck] = check_video,
) -> dict[str, VideoCheck]:
    """``check`` (a module-level function like :func:`check_video`) for every path (those in ``images`` as still
    images) in ``workers`` threads, each owning one decode process with the time and memory limits of ``options``;
    results are appended to ``journal`` as they come, and those it holds already are not checked again."""
    done = journal.load(paths) if journal is not None else {}
    if done:
        print(f"continuing from {journal.path}: {len(done)} of {len(paths)} files already checked", file=sys.stderr)
    results = dict(done)
    jobs = (
        (path, (path, options.backend, options.decode, path in images, options.max_pixels))
        for path in paths
        if path not in done
    )
    outcomes = map_guarded(
        check, jobs, workers, options.timeout, options.memory_gib, ("simvlg_video.data_tools.check_videos",)
    )
    progress = tqdm(
        outcomes,
        total=len(paths) - len(done),
        desc="check videos",
        unit="video",
        disable=not show_progress,
        dynamic_ncols=True,
    )
    for path, outcome in progress:
        if isinstance(outcome, VideoDecodeError):  # a hang, a crash or the memory limit: the child is gone
            outcome = VideoCheck(path, "unreadable", outcome.reason)
        elif isinstance(outcome, Exception):
            outcome = VideoCheck(path, "unreadable", f"{type(outcome).__name__}: {outcome}")
        results[path] = outcome
        if journal is not None:
            journal.append(outcome)
    return {path: results[path] for path in paths}


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


class CheckError(UserError, ValueError):
    """The check cannot run, or found nothing to keep; the message says which file and why."""


def check_manifest(
    manifest: Path,
    out: Path,
    report_path: Path,
    workers: int,
    options: CheckOptions = CheckOptions(),
    show_progress: bool = True,
    check: Callable[..., VideoCheck] = check_video,
) -> dict:
    """Check every file `manifest` names, journaled beside `report_path`; write the report, then the manifest of
    the clips to keep as `out` (none to keep: a :class:`CheckError`, after the report)."""
    if out.resolve() == manifest.resolve():  # also through symbolic links
        raise CheckError(f"--out {out} would overwrite the manifest being checked")
    records = read_manifest(manifest)
    paths = sorted({str(record.video_path) for record in records})
    images = frozenset(str(record.video_path) for record in records if record.is_image)
    journal = CheckJournal(report_path.with_name(f"{report_path.stem}.journal.jsonl"), options)
    videos = check_videos(paths, workers, options, show_progress, images, journal, check)
    kept, report = filter_manifest(records, videos, out)
    report = {"manifest": str(manifest), "checked_manifest": str(out), **report}
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    journal.remove()  # the report holds every result now
    print(
        f"{report['kept_clips']} of {report['clips']} clips kept; {report['missing_videos']} missing and "
        f"{report['unreadable_videos']} unreadable videos of {report['videos']}, {report['empty_windows']} clips "
        f"with an empty window. Report: {report_path}"
    )
    if not kept:
        raise CheckError(f"no readable clip in {manifest}; nothing written to {out}")
    write_manifest(out, kept)
    print(f"wrote {out}")
    return report


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m simvlg_video.data_tools.check_videos",
        description=__doc__,
        epilog=f"{EXIT_STATUS_HELP}; 130 when stopped with Ctrl-C (the same command continues)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = CheckOptions()
    parser.add_argument("manifest", type=Path, help="manifest written by simvlg_video.data_tools.convert")
    parser.add_argument("--out", type=Path, help="filtered manifest (default: <manifest stem>.checked.jsonl)")
    parser.add_argument("--report", type=Path, help="JSON report (default: <manifest stem>.check_report.json)")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="files checked at once, each in a decode process of its own (default: the CPU count; 0 as 1)",
    )
    parser.add_argument("--backend", default=defaults.backend, help="decoder backend, as data.backend (default: auto)")
    parser.add_argument("--decode", action="store_true", help="also decode each video's first and last frame")
    parser.add_argument(
        "--timeout",
        type=float,
        default=defaults.timeout,
        help="seconds one file may take before its decode process is killed (default: %(default)s)",
    )
    parser.add_argument(
        "--memory-gib",
        type=float,
        default=defaults.memory_gib,
        help="address space of a decode process, GiB (default: %(default)s)",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=defaults.max_pixels,
        help="the largest image or video frame, width x height (default: %(default)s)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}")
    if not args.timeout > 0 or not args.memory_gib > 0 or args.max_pixels < 1:
        parser.error("--timeout, --memory-gib and --max-pixels must be positive")
    options = CheckOptions(args.backend, args.decode, args.timeout, args.memory_gib, args.max_pixels)
    out = args.out or default_output(args.manifest, "checked.jsonl")
    report_path = args.report or default_output(args.manifest, "check_report.json")
    return check_manifest(args.manifest, out, report_path, args.workers, options, show_progress=not args.quiet)


def cli() -> int:
    """`python -m simvlg_video.data_tools.check_videos` and the `simvlg-check-videos` script: the exit status (130
    when stopped with Ctrl-C: the same command continues)."""
    try:
        return exit_status(main)
    except KeyboardInterrupt:
        print("stopped: the same command continues the check where it was", file=sys.stderr)
        return STOPPED


if __name__ == "__main__":
    sys.exit(cli())
