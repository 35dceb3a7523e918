"""One table over finished runs (an ablation sweep): adapter choice, scores, training speed and memory.

    python -m simvlg_video.eval.runs multirun/2026-11-27_04-00-00     # every run directory below it
    python -m simvlg_video.eval.runs RUN_DIR [RUN_DIR ...]

Reads each run's config.yaml and the summary line of its metrics.jsonl (written last, so a run that failed half-way
is listed as unfinished rather than silently left out).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from omegaconf import OmegaConf

from simvlg_video.adapters.placements import PLACEMENTS
from simvlg_video.data.manifest import json_problem

COLUMNS = ("CIDEr", "BLEU-4", "motion_acc", "direction_acc", "object_acc")
EVENT_COLUMNS = (
    "event_order_acc",
    "event_order_acc_objects_right",
    "speed_acc",
)  # shown when some run has them (the synthetic event set)


def _job_order(path: Path) -> tuple:
    """Sort key: shallower first, then names with their numbers compared as numbers (a sweep's job 10 after job 9)."""
    return len(path.parts), [
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", str(path)) if part
    ]


def find_runs(paths: list[Path]) -> list[Path]:
    """Run directories (holding config.yaml) among `paths` and below them, in job order."""
    runs: set[Path] = set()
    for path in paths:
        if not path.exists():
            raise SystemExit(f"error: {path}: no such directory")
        runs.update(
            p.parent
            for p in ([path / "config.yaml"] if (path / "config.yaml").is_file() else path.rglob("config.yaml"))
            if not p.parent.name.startswith(".")
        )
    if not runs:
        raise SystemExit(f"error: no run directory (config.yaml) under {', '.join(map(str, paths))}")
    return sorted(runs, key=_job_order)


def adapter_label(cfg) -> str:
    """`none`, `reference`, `merged_tokens` (the `adapter=` choice), with the time and space codes and the patched
    blocks where they apply."""
    adapter = cfg.get("adapter") or {}
    target = str(adapter.get("_target_", ""))
    name = next(
        (
            choice
            for choice, placement in PLACEMENTS.items()
            if target == f"{placement.__module__}.{placement.__qualname__}"
        ),
        target.rsplit(".", 1)[-1] or "none",
    )
    details = []
    if adapter.get("blocks") not in (None, "all"):
        details.append(f"blocks={adapter.blocks}" if adapter.blocks != "last_k" else f"last {adapter.last_k}")
    for key in ("queries", "time_encoding", "space_encoding"):
        if key in adapter:
            details.append(f"{key.split('_')[0]}: {adapter[key]}")
    return name + (f" ({', '.join(details)})" if details else "")


def read_log(log: Path) -> list[dict]:
    """The JSON objects of a metrics.jsonl; a broken line stops with its file and line number, not a bare traceback."""
    records = []
    for number, line in enumerate(log.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise SystemExit(f"error: {log}:{number}: not a JSON line ({json_problem(err, line=False)})") from None
        if not isinstance(record, dict):
            raise SystemExit(f"error: {log}:{number}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    return records


def summary_line(records: list[dict]) -> dict | None:
    """The last summary record (written when a run finishes), or None."""
    return next((record for record in reversed(records) if record.get("phase") == "summary"), None)


def run_summary(run_dir: Path) -> dict | None:
    """The summary line of RUN_DIR/metrics.jsonl, or None when the run did not finish."""
    log = run_dir / "metrics.jsonl"
    return summary_line(read_log(log)) if log.is_file() else None


def memory_cell(summary: dict) -> str:
    """Peak training memory with what was measured (GPU allocator or process RSS): the two are not comparable."""
    if "train_peak_memory_gib" not in summary:
        return "-"
    return f"{summary['train_peak_memory_gib']:.2f} ({summary.get('train_memory_kind', '?')})"


def runs_table(run_dirs: list[Path]) -> str:
    """Markdown table: one row per run; scores x100, videos/s and peak memory of training."""
    summaries = {run_dir: run_summary(run_dir) for run_dir in run_dirs}
    columns = [
        *COLUMNS,
        *(c for c in EVENT_COLUMNS if any(s is not None and c in s["adapted"] for s in summaries.values())),
    ]
    header = ["run", "adapter", *columns, "train videos/s", "peak memory (GiB)"]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for run_dir in run_dirs:
        label = adapter_label(OmegaConf.load(run_dir / "config.yaml"))
        summary = summaries[run_dir]
        if summary is None:
            lines.append(f"| {run_dir.name} | {label} | unfinished |" + " |" * (len(header) - 3))
            continue
        metrics = summary["adapted"]
        cells = [f"{100 * metrics[c]:.1f}" if c in metrics else "-" for c in columns]
        lines.append(
            f"| {run_dir.name} | {label} | "
            + " | ".join(cells)
            + f" | {summary['train_videos_per_s']:.1f} | {memory_cell(summary)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="run directories, or folders holding them (a sweep)")
    table = runs_table(find_runs(parser.parse_args(argv).paths))
    print(table)
    return table


if __name__ == "__main__":
    main()
