"""The ablation report of a sweep: one table row per run, a metric against frames per clip, and the loss curves,
written as DIR/report.md (the table with both pictures under it), DIR/metric_vs_frames.png and DIR/loss_curves.png.
Runs without a summary line (crashed or still running) are listed as unfinished, never left out.
"""

from __future__ import annotations

from pathlib import Path

from simvlg_video.eval.report_plots import plot_loss_curves, plot_metric_vs_frames
from simvlg_video.eval.sweep import RunResult, common_overrides, metric_series, own_overrides
from simvlg_video.eval.table import runs_table_of

MOTION = "motion_acc"  # only on the synthetic shapes data: a plot row only where some run has it
PLOTS = ("metric_vs_frames.png", "loss_curves.png")


def _has_motion(runs: list[RunResult]) -> bool:
    return any(MOTION in run.metrics for run in runs)


def report_table(runs: list[RunResult]) -> str:
    """Markdown table in job order: scores x100 (1 decimal), training clips/s and peak memory with its kind."""
    common = common_overrides(runs)
    return runs_table_of(["run", "overrides"], [([run.name, own_overrides(run, common)], run.summary) for run in runs])


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
