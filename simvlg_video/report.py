"""The ablation report of a sweep: one table row per run, a metric against frames per clip, and the loss curves.

    python -m simvlg_video.adapt -m data.num_frames=2,4,8 sampler=uniform,headtail adapter=none,reference
    python -m simvlg_video.report multirun/2026-11-27_04-00-00 [--out DIR]

Writes DIR/report.md (the table and both pictures), DIR/metric_vs_frames.png and DIR/loss_curves.png; DIR defaults to
the sweep folder. Runs without a summary line (crashed or still running) are listed as unfinished, never left out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from simvlg_video.eval.sweep import read_sweep
from simvlg_video.eval.sweep_report import write_report


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path, help="a sweep folder (one run directory per job) or one run directory")
    parser.add_argument("--out", type=Path, default=None, help="where to write the report (default: SWEEP)")
    args = parser.parse_args(argv)
    if not args.sweep.is_dir():
        raise SystemExit(f"error: {args.sweep}: no such directory")
    table = write_report(read_sweep(args.sweep), args.out or args.sweep, args.sweep.name)
    print(table)
    return table


if __name__ == "__main__":
    main()
