"""A run's log: RUN_DIR/metrics.jsonl (every record) and TensorBoard scalars (RUN_DIR/tensorboard), rank 0 only.

On resume the records a killed run wrote after its checkpoint are dropped (the resumed run writes them again), and
a `{"phase": "resume", "step": N, ...}` line marks the seam (with the settings the resume changed), so the file reads
as one run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from simvlg_video.world import World

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
_STEPPED_PHASES = {"train", "val", "resume"}


class JsonlLog:
    """Appends one JSON object per line (RUN_DIR/metrics.jsonl), flushed at once so a crash loses nothing."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def drop_records_after(path: Path, step: int) -> int:
    """Remove train/val records and resume seams past `step` from a metrics file (atomically); returns how many
    were removed."""
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
        self.tensorboard_dir = Path(run_dir) / TENSORBOARD_DIR if tensorboard else None
        self.writer = None  # opened at the first record, after the seam is known
        self.purge_step: int | None = None
        if resume_step is not None:
            self.resume_at(resume_step)

    def resume_at(self, step: int, **details) -> None:
        """Mark where a resumed run continues: the records past `step` are dropped, a seam record (with `details`)
        is written, and TensorBoard purges the steps past it."""
        if not self.enabled:
            return
        drop_records_after(self.jsonl.path, step)
        self.jsonl({"phase": "resume", "step": step, **details})
        self.purge_step = step
        self.close()  # a writer opened before the seam was known reopens with it

    def __call__(self, record: dict) -> None:
        if not self.enabled:
            return
        self.jsonl(record)
        if self.tensorboard_dir is None:
            return
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.tensorboard_dir), purge_step=self.purge_step)
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
            self.writer = None
