"""Where a run starts: a fresh run directory, or the checkpoints of an interrupted one, and what a resume may change.

    python -m simvlg_video.adapt hydra.run.dir=RUN_DIR resume=auto [the run's overrides] [train.lr=...]

A resumed run must be the run it continues: its settings are compared with RUN_DIR/config.yaml before anything in
the run directory is touched. A key of RESUME_MAY_CHANGE may differ when the command line names it (the way out of a
run the non-finite guard stopped is a lower `train.lr`); any other difference is named and refused. A fresh run never
writes into a directory that already holds checkpoints.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from simvlg_video.durable import write_text_atomically
from simvlg_video.errors import UserError
from simvlg_video.train.checkpoint import Checkpoints
from simvlg_video.train.run_log import RunLog
from simvlg_video.world import World

log = logging.getLogger(__name__)

RUN_CONFIG = "config.yaml"
# What a resume may change when the command line names it: the schedule's rate, clipping, the guard, how often the
# run logs, saves and validates, how captions are decoded and how long a decode may take, how the global batch is
# split (per-process batch, loader workers), and how long a collective waits. None of them changes the model, the
# data or their order; docs/training.md says which ones change the numbers that follow. The number of processes is no
# setting: a resume on another one adapts train.accumulation to keep the run's global batch, and config.yaml keeps
# the run's value.
RESUME_MAY_CHANGE = (
    "train.lr",
    "train.min_lr",
    "train.grad_clip",
    "train.batch_size",
    "data.num_workers",
    "train.max_nonfinite_in_a_row",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.eval_every",
    "train.collective_timeout_min",
    "eval.num_beams",
    "eval.min_new_tokens",
    "eval.max_new_tokens",
    "eval.batch_size",
    "data.decode_timeout",
)


class ResumeRefused(UserError, ValueError):
    """A resume that would not continue the same run; nothing in the run directory was touched."""


def resume_candidates(cfg: DictConfig, checkpoints: Checkpoints, run_dir: Path) -> list[Path]:
    """The checkpoints a resume tries in turn, newest first: `resume=auto` every complete one in the run directory
    (none: start fresh), `resume=PATH` that one alone, `resume=null` none (a run directory with checkpoints is
    refused)."""
    if cfg.resume in (None, False):
        if checkpoints.complete():
            raise ResumeRefused(
                f"{run_dir} already holds checkpoints; continue it with resume=auto or choose another run directory"
            )
        return []
    if cfg.resume == "auto":
        return checkpoints.newest_first()
    folder = Path(cfg.resume).expanduser().resolve()
    chosen = [path for path in checkpoints.complete() if path.resolve() == folder]
    if not chosen:
        raise ResumeRefused(
            f"resume={cfg.resume}: not a complete checkpoint of {run_dir} "
            f"(complete: {[p.name for p in checkpoints.complete()] or 'none'})"
        )
    return chosen


def changed_settings(saved: dict, current: dict, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """{key: (old, new)} for every leaf setting that differs between two resolved configs."""
    changes = {}
    for key in sorted(set(saved) | set(current), key=str):
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changes.update(changed_settings(old, new, f"{prefix}{key}."))
        elif old != new:
            changes[f"{prefix}{key}"] = (old, new)
    return changes


def as_current(saved: dict) -> dict:
    """A run's config as this version names its keys: the loader worker count, once `train.num_workers`, is
    `data.num_workers` (one count for the training and the evaluation loaders)."""
    train, data = saved.get("train"), saved.get("data")
    if isinstance(train, dict) and isinstance(data, dict) and "num_workers" in train and "num_workers" not in data:
        data["num_workers"] = train.pop("num_workers")
    return saved


def check_same_config(cfg: DictConfig, run_dir: Path, named: Iterable[str] = ()) -> dict[str, tuple[Any, Any]]:
    """The settings a resume changes ({key: (the run's, the new)}): keys of RESUME_MAY_CHANGE that the command line
    names. Any other difference from the run's config.yaml (other than `resume` itself) is refused, naming each."""
    saved = as_current(OmegaConf.to_container(OmegaConf.load(run_dir / RUN_CONFIG), resolve=True))
    current = OmegaConf.to_container(cfg, resolve=True)
    changes = {key: values for key, values in changed_settings(saved, current).items() if key != "resume"}
    named = set(named)
    refused = [key for key in changes if key not in RESUME_MAY_CHANGE or key not in named]
    if refused:
        raise ResumeRefused(
            f"resuming {run_dir} with other settings than its {RUN_CONFIG}:\n  "
            + "\n  ".join(f"{key}: {changes[key][0]!r} -> {changes[key][1]!r}" for key in refused)
            + f"\nresume with the run's own overrides; a resume may change only {', '.join(RESUME_MAY_CHANGE)}, "
            "each named on the command line"
        )
    return changes


@dataclass
class RunFiles:
    """The run directory's checkpoints, the ones a resume tries (newest first; none: a fresh start), the run's log,
    and the settings a resume changes."""

    checkpoints: Checkpoints
    candidates: list[Path]
    log: RunLog
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    config: str | None = None  # the run's new config.yaml, written once a resume that changes settings is under way

    def resumed(self, path: Path, state: dict, **adapted: list[int]) -> None:
        """Mark the run directory as continuing from checkpoint `path` (loaded on every rank): newer checkpoints set
        aside, checkpoints/best.json as of `path`, config.yaml with the changed settings, the seam in the log (with
        what the resume adapted to its number of processes: {"processes": [old, new], "accumulation": [...]})."""
        moved_to = self.checkpoints.set_aside_newer(path)
        self.checkpoints.record_best(state.get("best"))
        for key, (old, new) in self.changes.items():
            log.info("resumed with %s: %r -> %r (named on the command line)", key, old, new)
        if self.config is not None and self.checkpoints.world.is_main:
            write_text_atomically(self.checkpoints.folder.parent / RUN_CONFIG, self.config)
        details = {"from": path.name, **adapted}
        if self.changes:
            details["changed"] = {key: list(values) for key, values in self.changes.items()}
        if moved_to is not None:
            details["set_aside"] = str(moved_to)
        self.log.resume_at(int(state["step"]), **details)


def open_run(cfg: DictConfig, run_dir: Path, world: World, named: Iterable[str] = ()) -> RunFiles:
    """Open a run directory. A fresh run writes config.yaml; a resumed one is checked against it (`named`: the keys
    the command line sets, which a resume may change) and touches nothing until its checkpoint is loaded."""
    checkpoints = Checkpoints(run_dir, world, keep_last=cfg.train.keep_checkpoints, seed=cfg.seed)
    candidates = resume_candidates(cfg, checkpoints, run_dir)
    changes: dict[str, tuple[Any, Any]] = {}
    config = None
    if candidates:
        changes = check_same_config(cfg, run_dir, named)
        config = OmegaConf.to_yaml(cfg, resolve=True) if changes else None
    elif world.is_main:
        write_text_atomically(run_dir / RUN_CONFIG, OmegaConf.to_yaml(cfg, resolve=True))
    # resume=auto before any checkpoint was written starts over: the killed attempt's records are dropped.
    resume_step = 0 if not candidates and cfg.resume == "auto" else None
    run_log = RunLog(run_dir, world, cfg.train.tensorboard, resume_step=resume_step)
    return RunFiles(checkpoints, candidates, run_log, changes, config)
