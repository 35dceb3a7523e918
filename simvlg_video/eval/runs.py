"""One table over finished runs (an ablation sweep): adapter choice, scores, training speed and memory.

    python -m simvlg_video.eval.runs multirun/2026-11-27_04-00-00     # every run directory below it
    python -m simvlg_video.eval.runs RUN_DIR [RUN_DIR ...]

Reads each run's config.yaml and the summary line of its metrics.jsonl (written last, so a run that failed half-way
is listed as unfinished rather than silently left out).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from omegaconf import OmegaConf

COLUMNS = ("CIDEr", "BLEU-4", "motion_acc", "direction_acc", "object_acc")


def find_runs(paths: list[Path]) -> list[Path]:
    """Run directories (holding config.yaml) among `paths` and below them, in name order."""
    runs: set[Path] = set()
    for path in paths:
        if not path.exists():
            raise SystemExit(f"error: {path}: no such directory")
        runs.update(p.parent for p in ([path / "config.yaml"] if (path / "config.yaml").is_file()
                                       else path.rglob("config.yaml")) if not p.parent.name.startswith("."))
    if not runs:
        raise SystemExit(f"error: no run directory (config.yaml) under {', '.join(map(str, paths))}")
    return sorted(runs, key=lambda p: (len(p.parts), str(p)))


def adapter_label(cfg) -> str:
    """`none`, `reference`, `merged_tokens`, with the time encoding and the patched blocks where they apply."""
    adapter = cfg.get("adapter") or {}
    name = str(adapter.get("_target_", "none")).rsplit(".", 1)[-1]
    details = []
    if adapter.get("blocks") not in (None, "all"):
        details.append(f"blocks={adapter.blocks}" if adapter.blocks != "last_k" else f"last {adapter.last_k}")
    for key in ("time_encoding", "space_encoding"):
        if key in adapter:
            details.append(f"{key.split('_')[0]}: {adapter[key]}")
    return name + (f" ({', '.join(details)})" if details else "")


def run_summary(run_dir: Path) -> dict | None:
    """The summary line of RUN_DIR/metrics.jsonl, or None when the run did not finish."""
    log = run_dir / "metrics.jsonl"
    if not log.is_file():
        return None
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return next((line for line in reversed(lines) if line.get("phase") == "summary"), None)


def runs_table(run_dirs: list[Path]) -> str:
    """Markdown table: one row per run; scores x100, videos/s and peak memory of training."""
    header = ["run", "adapter", *COLUMNS, "train videos/s", "peak memory (GiB)"]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for run_dir in run_dirs:
        label = adapter_label(OmegaConf.load(run_dir / "config.yaml"))
        summary = run_summary(run_dir)
        if summary is None:
            lines.append(f"| {run_dir.name} | {label} | unfinished |" + " |" * (len(header) - 3))
            continue
        metrics = summary["adapted"]
        cells = [f"{100 * metrics[c]:.1f}" if c in metrics else "-" for c in COLUMNS]
        memory = f"{summary['train_peak_memory_gib']:.2f} ({summary['train_memory_kind']})" \
            if "train_peak_memory_gib" in summary else "-"
        lines.append(f"| {run_dir.name} | {label} | " + " | ".join(cells)
                     + f" | {summary['train_videos_per_s']:.1f} | {memory} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="run directories, or folders holding them (a sweep)")
    table = runs_table(find_runs(parser.parse_args(argv).paths))
    print(table)
    return table


if __name__ == "__main__":
    main()
