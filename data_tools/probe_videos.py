"""Probe every video of a manifest once and write the facts into it: true frame count, frame rate, duration,
size, keyframe positions and display rotation (see ``simvlg_video/data/probe.py``).

    python -m simvlg_video.data_tools.probe_videos MANIFEST [--out PROBED.jsonl] [--workers 8] [--timeout 60]

Files are probed in parallel child processes, each probe with a time limit. A file that cannot be probed is
reported on one line (path, reason) and its row is kept without metadata (``--drop-unreadable`` leaves it out);
the loader then skips it with the same reason. The manifest is rewritten atomically (in place by default).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from simvlg_video.data.limits import DEFAULT_DECODE_TIMEOUT
from simvlg_video.data.manifest import ClipRecord, read_manifest, write_manifest
from simvlg_video.data.probe import probe_paths
from simvlg_video.errors import EXIT_STATUS_HELP, OK, SOME_FAILED, exit_status


def probe_manifest(
    manifest: Path,
    out: Path | None = None,
    workers: int = 4,
    timeout: float = DEFAULT_DECODE_TIMEOUT,
    drop_unreadable: bool = False,
    show_progress: bool = True,
) -> dict[str, str]:
    """Write ``manifest`` with probed metadata to ``out`` (default: in place); returns {clip_id: reason} of the
    clips whose video could not be probed."""
    records = read_manifest(manifest)
    probes = probe_paths([record.video_path for record in records], workers, timeout, show_progress)
    failed: dict[str, str] = {}
    rows: list[ClipRecord] = []
    for record in records:
        probe = probes[record.video_path]
        if isinstance(probe, str):
            failed[record.clip_id] = probe
            print(f"cannot probe {record.video_path}: {probe}", file=sys.stderr)
            if not drop_unreadable:
                rows.append(record)
            continue
        rows.append(dataclasses.replace(record, **probe.record_fields()))
    write_manifest(out or manifest, rows)
    return failed


def main(argv: list[str] | None = None) -> int:
    """Probe as the command line says; returns SOME_FAILED when a clip's video could not be read (each is named on
    stderr)."""
    parser = argparse.ArgumentParser(
        prog="python -m simvlg_video.data_tools.probe_videos",
        description=__doc__,
        epilog=EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("manifest", type=Path, help="manifest.jsonl to probe")
    parser.add_argument("--out", type=Path, help="write here instead of rewriting the manifest in place")
    parser.add_argument("--workers", type=int, default=4, help="probe processes (default %(default)s)")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_DECODE_TIMEOUT, help="seconds per file (default %(default)s)"
    )
    parser.add_argument("--drop-unreadable", action="store_true", help="leave out clips whose video cannot be read")
    args = parser.parse_args(argv)
    failed = probe_manifest(args.manifest, args.out, args.workers, args.timeout, args.drop_unreadable)
    total = len(read_manifest(args.out or args.manifest)) + (len(failed) if args.drop_unreadable else 0)
    print(
        f"probed {total - len(failed)} of {total} clips; {len(failed)} could not be read"
        + (" and were left out" if args.drop_unreadable and failed else "")
    )
    return SOME_FAILED if failed else OK


def cli() -> int:
    """`python -m simvlg_video.data_tools.probe_videos` and the `simvlg-probe-videos` script: the exit status."""
    return exit_status(main)


if __name__ == "__main__":
    sys.exit(cli())
