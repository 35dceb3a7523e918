"""Markdown tables of metrics, one row per model or run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

DEFAULT_COLUMNS = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "motion_acc", "direction_acc", "object_acc")


def metrics_table(rows: Mapping[str, Mapping[str, float]], columns: Sequence[str] = DEFAULT_COLUMNS) -> str:
    """Rows of metrics as a markdown table; COCO scores and accuracies as percentages, missing values as '-'."""
    present = [c for c in columns if any(c in metrics for metrics in rows.values())]
    lines = ["| model | " + " | ".join(present) + " |", "|---|" + "---:|" * len(present)]
    for name, metrics in rows.items():
        cells = [f"{100 * metrics[c]:.1f}" if c in metrics else "-" for c in present]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
