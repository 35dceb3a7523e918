"""The sweep report's two pictures: a metric against frames per clip, and the training loss of every run.

Drawn with the Agg backend (files only, no display), so the report runs on a headless machine.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from simvlg_video.eval.sweep import RunResult, common_overrides, own_overrides

Series = dict[tuple[str, str], list[tuple[int, float]]]


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def plot_metric_vs_frames(rows: dict[str, Series], out: Path) -> None:
    """One row of panels per metric (ROWS: axis label -> series), one panel per setting, one line per sampler.

    Panels of a row share the y axis so that settings compare at a glance; the sampler legend sits under the
    panels rather than over the points.
    """
    panels = list(dict.fromkeys(panel for series in rows.values() for panel, _ in series))
    samplers = list(dict.fromkeys(sampler for series in rows.values() for _, sampler in series))
    if not panels:
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no finished run with data.num_frames and a score", ha="center", va="center")
        fig.savefig(out, dpi=100)
        plt.close(fig)
        return
    colors = {sampler: f"C{i % 10}" for i, sampler in enumerate(samplers)}
    fig, axes = plt.subplots(
        len(rows),
        len(panels),
        figsize=(max(5.0, 3.4 * len(panels)), 2.8 * len(rows) + 1.2),
        sharey="row",
        squeeze=False,
        layout="constrained",
    )
    for row, (metric, series) in enumerate(rows.items()):
        for col, panel in enumerate(panels):
            ax = axes[row][col]
            frames: set[int] = set()
            for sampler in samplers:
                points = series.get((panel, sampler), [])
                if points:
                    xs, ys = zip(*points)
                    ax.plot(xs, ys, marker="o", color=colors[sampler], label=sampler)
                    frames.update(xs)
            ax.set_xscale("log", base=2)  # frame counts double from one setting to the next
            ax.set_xticks(sorted(frames), labels=[str(f) for f in sorted(frames)])
            ax.minorticks_off()
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(_wrap(panel, 32), fontsize=9)
            if col == 0:
                ax.set_ylabel(metric)
            if row == len(rows) - 1:
                ax.set_xlabel("frames per clip")
    handles = [plt.Line2D([], [], marker="o", color=colors[s]) for s in samplers]
    fig.legend(handles, samplers, title="sampler", loc="outside lower center", ncols=min(len(samplers), 6))
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_loss_curves(runs: list[RunResult], out: Path) -> None:
    """Training loss against step, one line per run (dashed: unfinished), the legend under the axes."""
    fig, ax = plt.subplots(figsize=(10, 5 + 0.25 * len(runs)), layout="constrained")
    drawn = 0
    common = common_overrides(runs)
    palette = plt.get_cmap("tab10" if len(runs) <= 10 else "tab20")  # a colour per run up to 20 runs
    for i, run in enumerate(runs):
        if not run.loss:
            continue
        steps, losses = zip(*run.loss)
        label = _wrap(f"{run.name}: {own_overrides(run, common)}" + ("" if run.finished else " (unfinished)"), 70)
        ax.plot(
            steps,
            losses,
            color=palette(i % palette.N),
            linestyle="-" if run.finished else "--",
            linewidth=1,
            marker="o" if len(steps) == 1 else None,
            label=label,
        )
        drawn += 1
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3)
    if drawn:
        fig.legend(loc="outside lower center", ncols=2 if drawn > 3 else 1, fontsize=8)
    else:
        ax.text(0.5, 0.5, "no training loss logged", ha="center", va="center", transform=ax.transAxes)
    fig.savefig(out, dpi=100)
    plt.close(fig)
