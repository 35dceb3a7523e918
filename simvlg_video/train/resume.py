"""Where a run starts: a fresh run directory, or the newest complete checkpoint of an interrupted one.

    python -m simvlg_video.adapt hydra.run.dir=RUN_DIR resume=auto [the run's overrides]

A resumed run must be the same run: its settings are compared with RUN_DIR/config.yaml and any difference is
named and refused. A fresh run never writes into a directory that already holds checkpoints.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from simvlg_video.train.checkpoint import Checkpoints
from simvlg_video.train.distributed import World
from simvlg_video.train.run_log import RunLog


def resume_point(cfg: DictConfig, checkpoints: Checkpoints, run_dir: Path) -> Path | None:
    """The checkpoint to continue: `resume=auto` the newest complete one in the run directory (none: start
    fresh), `resume=PATH` that checkpoint folder, `resume=null` none (a run directory with checkpoints is refused)."""
    if cfg.resume in (None, False):
        if checkpoints.complete():
            raise SystemExit(f"error: {run_dir} already holds checkpoints; continue it with resume=auto or choose "
                             "another run directory")
        return None
    if cfg.resume == "auto":
        return checkpoints.latest()
    folder = Path(cfg.resume).expanduser()
    if folder not in checkpoints.complete():
        raise SystemExit(f"error: resume={folder}: not a complete checkpoint of {run_dir} "
                         f"(complete: {[p.name for p in checkpoints.complete()] or 'none'})")
    return folder


def changed_settings(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """`key: old -> new` for every leaf setting that differs between two resolved configs."""
    changes = []
    for key in sorted(set(saved) | set(current), key=str):
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changes += changed_settings(old, new, f"{prefix}{key}.")
        elif old != new:
            changes.append(f"{prefix}{key}: {old!r} -> {new!r}")
    return changes


def check_same_config(cfg: DictConfig, run_dir: Path) -> None:
    """A resumed run must be the run it continues: any changed setting other than `resume` is refused."""
    saved = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=True)
    current = OmegaConf.to_container(cfg, resolve=True)
    changes = [c for c in changed_settings(saved, current) if not c.startswith("resume:")]
    if changes:
        raise SystemExit(f"error: resuming {run_dir} with other settings than its config.yaml:\n  "
                         + "\n  ".join(changes) + "\nresume with the run's own overrides")


def open_run(cfg: DictConfig, run_dir: Path, world: World) -> tuple[Checkpoints, Path | None, RunLog]:
    """Checkpoints of the run directory, the one to resume from (None: a fresh start), and the run's log (with
    records a killed attempt wrote past that checkpoint dropped); writes config.yaml for a fresh run."""
    checkpoints = Checkpoints(run_dir, world, keep_last=cfg.train.keep_checkpoints)
    resume_from = resume_point(cfg, checkpoints, run_dir)
    if resume_from is not None:
        check_same_config(cfg, run_dir)
    elif world.is_main:
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    # resume=auto before any checkpoint was written starts over: the killed attempt's records are dropped.
    resume_step = int(resume_from.name) if resume_from is not None else (0 if cfg.resume == "auto" else None)
    return checkpoints, resume_from, RunLog(run_dir, world, cfg.train.tensorboard, resume_step=resume_step)
