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
from simvlg_video.eval.report_plots import plot_loss_curves, plot_metric_vs_frames
from simvlg_video.eval.runs import RunsError, memory_cell
from simvlg_video.eval.sweep import RunResult, common_overrides, metric_series, own_overrides, read_sweep

SCORES = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
MOTION = "motion_acc"  # only on the synthetic shapes data: a column and a plot row only where some run has it
PLOTS = ("metric_vs_frames.png", "loss_curves.png")


def _has_motion(runs: list[RunResult]) -> bool:
    return any(MOTION in run.metrics for run in runs)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # an override such as a|b would otherwise split the row


def report_table(runs: list[RunResult]) -> str:
    """Markdown table in job order: scores x100 (1 decimal), training videos/s and peak memory with its kind."""
    scores = [*SCORES, MOTION] if _has_motion(runs) else list(SCORES)
    header = [
        "run",
        "overrides",
        *(("motion acc" if s == MOTION else s) for s in scores),
        "train videos/s",
        "peak memory (GiB)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    common = common_overrides(runs)
    for run in runs:
        cells = [run.name, own_overrides(run, common)]
        if run.summary is None:
            cells += ["unfinished"] + [""] * (len(header) - 3)
        else:
            cells += [f"{100 * run.metrics[s]:.1f}" if s in run.metrics else "-" for s in scores]
            speed = run.summary.get("train_videos_per_s")
            cells += [f"{speed:.1f}" if speed is not None else "-", memory_cell(run.summary)]
        lines.append("| " + " | ".join(map(_cell, cells)) + " |")
    return "\n".join(lines)


def write_report(runs: list[RunResult], out: Path, title: str) -> str:
    """Both pictures and report.md (the table with the pictures under it) in OUT; returns the table."""
    out.mkdir(parents=True, exist_ok=True)
    rows = {"CIDEr (x100)": metric_series(runs, "CIDEr")}
    if _has_motion(runs):
        rows["motion accuracy (%)"] = metric_series(runs, MOTION)
    plot_metric_vs_frames(rows, out / PLOTS[0])
    plot_loss_curves(runs, out / PLOTS[1])
    table = report_table(runs)
    common = common_overrides(runs)
    shared = f"Every run: `{' '.join(common)}`\n\n" if common else ""
    images = "\n\n".join(f"![{name.removesuffix('.png').replace('_', ' ')}]({name})" for name in PLOTS)
    (out / "report.md").write_text(f"# Sweep report: {title}\n\n{shared}{table}\n\n{images}\n")
    return table


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
