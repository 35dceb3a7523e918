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
import sys
from pathlib import Path

from omegaconf import OmegaConf

from simvlg_video.adapters.placements import LEGACY_TARGETS
from simvlg_video.data.manifest import json_problem
from simvlg_video.errors import EXIT_STATUS_HELP, UserError, exit_status
from simvlg_video.eval.table import runs_table_of


class RunsError(UserError, ValueError):
    """A folder that holds no run directory, or a run's file that cannot be read; the message names it."""


EARLIER_SUMMARY_KEYS = {"adapted": "trained", "train_videos_per_s": "train_clips_per_s"}


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
            raise RunsError(f"{path}: no such directory")
        runs.update(
            p.parent
            for p in ([path / "config.yaml"] if (path / "config.yaml").is_file() else path.rglob("config.yaml"))
            if not p.parent.name.startswith(".")
        )
    if not runs:
        raise RunsError(f"no run directory (config.yaml) under {', '.join(map(str, paths))}")
    return sorted(runs, key=_job_order)


def adapter_label(cfg) -> str:
    """`none`, `reference`, `merged_tokens` (the `adapter=` choice), with the time and space codes and the patched
    blocks where they apply."""
    adapter = cfg.get("adapter") or {}
    target = str(adapter.get("_target_", ""))  # runs configured before placements had names
    name = adapter.get("name") or LEGACY_TARGETS.get(target) or target.rsplit(".", 1)[-1] or "none"
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
            raise RunsError(f"{log}:{number}: not a JSON line ({json_problem(err, line=False)})") from None
        if not isinstance(record, dict):
            raise RunsError(f"{log}:{number}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    return records


def summary_line(records: list[dict]) -> dict | None:
    """The last summary record (written when a run finishes), or None. A summary of an earlier version, whose keys
    were named after the video stage (`adapted`, `train_videos_per_s`), is read under today's names."""
    summary = next((record for record in reversed(records) if record.get("phase") == "summary"), None)
    return None if summary is None else {EARLIER_SUMMARY_KEYS.get(key, key): value for key, value in summary.items()}


def run_summary(run_dir: Path) -> dict | None:
    """The summary line of RUN_DIR/metrics.jsonl, or None when the run did not finish."""
    log = run_dir / "metrics.jsonl"
    return summary_line(read_log(log)) if log.is_file() else None


def runs_table(run_dirs: list[Path]) -> str:
    """Markdown table: one row per run; scores x100, clips/s and peak memory of training."""
    runs = [([run.name, adapter_label(OmegaConf.load(run / "config.yaml"))], run_summary(run)) for run in run_dirs]
    return runs_table_of(["run", "adapter"], runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, epilog=EXIT_STATUS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("paths", nargs="+", type=Path, help="run directories, or folders holding them (a sweep)")
    paths = parser.parse_args(argv).paths
    return exit_status(lambda: print(runs_table(find_runs(paths))))


if __name__ == "__main__":
    sys.exit(main())
