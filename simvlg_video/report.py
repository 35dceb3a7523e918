"""The ablation report of a sweep: one table row per run, a metric against frames per clip, and the loss curves.

    python -m simvlg_video.adapt -m data.num_frames=2,4,8 sampler=uniform,headtail adapter=none,reference
    python -m simvlg_video.report multirun/2026-11-27_04-00-00 [--out DIR]

Writes DIR/report.md (the table and both pictures), DIR/metric_vs_frames.png and DIR/loss_curves.png; DIR defaults to
the sweep folder. Runs without a summary line (crashed or still running) are listed as unfinished, never left out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from simvlg_video.errors import EXIT_STATUS_HELP, exit_status
from simvlg_video.eval.runs import RunsError
from simvlg_video.eval.sweep import read_sweep
from simvlg_video.eval.sweep_report import write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simvlg_video.report",
        description=__doc__,
        epilog=EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("sweep", type=Path, help="a sweep folder (one run directory per job) or one run directory")
    parser.add_argument("--out", type=Path, default=None, help="where to write the report (default: SWEEP)")
    args = parser.parse_args(argv)
    return exit_status(lambda: print(report(args.sweep, args.out)))


def report(sweep: Path, out: Path | None = None) -> str:
    """Write the report of `sweep` into `out` (default: the sweep folder); returns its table. A folder that is not
    there, or holds no run, is a RunsError."""
    if not sweep.is_dir():
        raise RunsError(f"{sweep}: no such directory")
    return write_report(read_sweep(sweep), out or sweep, sweep.name)


if __name__ == "__main__":
    sys.exit(main())
