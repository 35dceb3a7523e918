"""Markdown tables of metrics, one row per model or run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

DEFAULT_COLUMNS = (
    "BLEU-4",
    "METEOR",
    "ROUGE-L",
    "CIDEr",
    "motion_acc",
    "direction_acc",
    "shape_acc",
    "colour_acc",
    "object_acc",
    "event_order_acc",
    "speed_acc",
    "speed_motion_acc",
)


def metrics_table(rows: Mapping[str, Mapping[str, float]], columns: Sequence[str] = DEFAULT_COLUMNS) -> str:
    """Rows of metrics as a markdown table; COCO scores and accuracies as percentages, missing values as '-'."""
    present = [c for c in columns if any(c in metrics for metrics in rows.values())]
    lines = ["| model | " + " | ".join(present) + " |", "|---|" + "---:|" * len(present)]
    for name, metrics in rows.items():
        cells = [f"{100 * metrics[c]:.1f}" if c in metrics else "-" for c in present]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def training_table(summary: Mapping) -> str:
    """The run summary's training figures as a two-column markdown table."""
    best = summary.get("best")
    memory = f"{summary['train_peak_memory_gib']:.2f} GiB ({summary['train_memory_kind']})"
    rows = [
        ("optimiser steps", str(summary["train_steps"])),
        ("processes", str(summary["world_size"])),
        ("training videos/s (this session)", f"{summary['train_videos_per_s']:.1f}"),
        ("waiting for data (s, rank 0)", f"{summary['train_data_wait_s']:.1f}"),
        ("peak memory", memory),
        ("steps skipped as non-finite", str(summary["nonfinite_steps_skipped"])),
        (
            "clips skipped (training / evaluation)",
            f"{summary['train_clips_skipped']} / {summary['eval_clips_skipped']}",
        ),
        ("best checkpoint", f"step {best['step']}, {best['metric']} {100 * best['value']:.1f}" if best else "-"),
    ]
    return "\n".join(["| training | |", "|---|---:|", *(f"| {name} | {value} |" for name, value in rows)])
