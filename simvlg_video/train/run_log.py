"""A run's log: RUN_DIR/metrics.jsonl (every record) and TensorBoard scalars (RUN_DIR/tensorboard), rank 0 only.

On resume the records a killed run wrote after its checkpoint are dropped (the resumed run writes them again), and
a `{"phase": "resume", "step": N}` line marks the seam, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from simvlg_video.world import JsonlLog, World

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
_STEPPED_PHASES = {"train", "val"}


def drop_records_after(path: Path, step: int) -> int:
    """Remove train/val records past `step` from a metrics file (atomically); returns how many were removed."""
    if not path.is_file():
        return 0
    kept, removed = [], 0
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # the killed run died while writing its last line
                removed += 1
                continue
            raise ValueError(f"{path}:{number}: not a JSON line; the metrics file is damaged") from None
        if record.get("phase") in _STEPPED_PHASES and record.get("step", 0) > step:
            removed += 1
        else:
            kept.append(line)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    temporary.replace(path)
    return removed


class RunLog:
    """Callable with one record (a flat dict, optionally holding a `metrics` dict); a no-op on ranks other than 0."""

    def __init__(self, run_dir: Path, world: World = World(), tensorboard: bool = True, resume_step: int | None = None):
        self.enabled = world.is_main
        self.jsonl = JsonlLog(Path(run_dir) / METRICS_FILE) if self.enabled else None
        self.writer = None
        if not self.enabled:
            return
        if resume_step is not None:
            drop_records_after(self.jsonl.path, resume_step)
            self.jsonl({"phase": "resume", "step": resume_step})
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(run_dir) / TENSORBOARD_DIR), purge_step=resume_step)

    def __call__(self, record: dict) -> None:
        if not self.enabled:
            return
        self.jsonl(record)
        if self.writer is None:
            return
        phase, step = record.get("phase", "train"), record.get("step", 0)
        prefix = phase if phase != "eval" else f"eval_{record.get('model', 'model')}"
        for key, value in {**record, **record.get("metrics", {})}.items():
            if (
                key not in ("step", "phase")
                and isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
            ):
                self.writer.add_scalar(f"{prefix}/{key}", value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
