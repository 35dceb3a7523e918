"""Markdown tables of metrics: one list of metric columns for every table, one row per model or run."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

# The metric columns of every table, in this order; a table shows the ones some row has.
COLUMNS = (
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
    "event_order_acc_objects_right",
    "speed_acc",
    "speed_motion_acc",
)


def shown_columns(rows: Iterable[Mapping[str, float]]) -> list[str]:
    """The columns that some of these rows of metrics have, in table order."""
    rows = list(rows)
    return [column for column in COLUMNS if any(column in metrics for metrics in rows)]


def metric_cells(metrics: Mapping[str, float], columns: Sequence[str]) -> list[str]:
    """COCO scores and accuracies as percentages with one decimal, missing values as '-'."""
    return [f"{100 * metrics[column]:.1f}" if column in metrics else "-" for column in columns]


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]], text_columns: int = 1) -> str:
    """A markdown table whose first `text_columns` columns are text and the rest numbers (right-aligned)."""
    numbers = len(header) - text_columns
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * text_columns + "---:|" * numbers]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |" for cells in rows]
    return "\n".join(lines)


def metrics_table(rows: Mapping[str, Mapping[str, float]]) -> str:
    """Rows of metrics (one per model) as a markdown table."""
    columns = shown_columns(rows.values())
    return markdown_table(["model", *columns], ([name, *metric_cells(m, columns)] for name, m in rows.items()))


def memory_cell(summary: Mapping) -> str:
    """Peak training memory with what was measured (GPU allocator or process RSS): the two are not comparable."""
    if "train_peak_memory_gib" not in summary:
        return "-"
    return f"{summary['train_peak_memory_gib']:.2f} ({summary.get('train_memory_kind', '?')})"


def runs_table_of(lead: Sequence[str], runs: Sequence[tuple[Sequence[str], Mapping | None]]) -> str:
    """One row per run: its `lead` cells (text), the trained model's scores, training clips/s and peak memory from
    its summary; a run without a summary (crashed or still running) is listed as unfinished."""
    columns = shown_columns(summary["trained"] for _, summary in runs if summary is not None)
    header = [*lead, *columns, "train clips/s", "peak memory (GiB)"]
    rows = []
    for cells, summary in runs:
        if summary is None:
            rows.append([*cells, "unfinished", *[""] * (len(header) - len(cells) - 1)])
            continue
        speed = summary.get("train_clips_per_s")
        speed_cell = "-" if speed is None else f"{speed:.1f}"
        rows.append([*cells, *metric_cells(summary["trained"], columns), speed_cell, memory_cell(summary)])
    return markdown_table(header, rows, text_columns=len(lead))


def training_table(summary: Mapping) -> str:
    """The run summary's training figures as a two-column markdown table."""
    best = summary.get("best")
    memory = f"{summary['train_peak_memory_gib']:.2f} GiB ({summary['train_memory_kind']})"
    rows = [
        ("optimiser steps", str(summary["train_steps"])),
        ("processes", str(summary["world_size"])),
        ("training clips/s (this session)", f"{summary['train_clips_per_s']:.1f}"),
        ("waiting for data (s, rank 0)", f"{summary['train_data_wait_s']:.1f}"),
        ("peak memory", memory),
        ("steps skipped as non-finite", str(summary["nonfinite_steps_skipped"])),
        (
            "clips skipped (training / evaluation)",
            f"{summary['train_clips_skipped']} / {summary['eval_clips_skipped']}",
        ),
        ("best checkpoint", f"step {best['step']}, {best['metric']} {100 * best['value']:.1f}" if best else "-"),
    ]
    return markdown_table(["training", ""], rows)
