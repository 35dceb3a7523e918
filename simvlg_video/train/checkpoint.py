"""Training checkpoints, RUN_DIR/checkpoints/<step>/ holding everything a run needs to continue exactly, and where a
run starts: a fresh run directory, or the newest complete checkpoint of an interrupted one.

```
checkpoints/00001000/trainable.safetensors   trainable tensors (full, also when FSDP shards them)
checkpoints/00001000/training_state.pt       step, optimiser, schedule, grad scaler, guards, best score, and per
                                             rank: data position and RNG states (Python, NumPy, torch CPU/CUDA)
checkpoints/best.json                        {"step", "metric", "value"} of the best validation score so far
```
A folder is written as `<step>.partial` and renamed when complete, and removed by renaming it to `.deleting` first,
so a process killed at any moment never leaves a folder that looks complete but is not. Rank 0 writes; every rank
takes part in gathering (FSDP tensors, per-rank state).

    python -m simvlg_video.adapt hydra.run.dir=RUN_DIR resume=auto [the run's overrides]

A resumed run must be the same run: its settings are compared with RUN_DIR/config.yaml and any difference is
named and refused, before anything in the run directory is touched. A fresh run never writes into a directory that
already holds checkpoints.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from simvlg_video.model.parallel import is_sharded, unwrap, whole_on_cpu
from simvlg_video.model.tensor_io import load_torch_file, read_safetensors, write_safetensors
from simvlg_video.train.run_log import RunLog
from simvlg_video.world import World, barrier, broadcast, gather

log = logging.getLogger(__name__)

TRAINABLE = "trainable.safetensors"
STATE = "training_state.pt"
BEST = "best.json"
_STEP_FOLDER = re.compile(r"\d{8}")


def rng_state() -> dict:
    """Every RNG state as lists, numbers and tensors: what `torch.load(weights_only=True)` reads back, so no global
    (NumPy's array type included) needs to be allowed for unpickling."""
    version, internal, gauss = random.getstate()
    kind, key, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [str(kind), key.tolist(), int(position), int(has_gauss), float(cached_gaussian)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, key, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, np.asarray(key, dtype=np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_tensors(model: nn.Module) -> dict[str, nn.Parameter]:
    """The live parameters that train (FSDP shards as they are)."""
    return {name: p for name, p in unwrap(model).named_parameters() if p.requires_grad}


class Checkpoints:
    """Saving, finding and loading the checkpoints of one run directory."""

    def __init__(self, run_dir: Path, world: World = World(), keep_last: int = 2):
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.folder = Path(run_dir) / "checkpoints"
        self.world = world
        self.keep_last = keep_last

    def complete(self) -> list[Path]:
        """Finished checkpoint folders, oldest first."""
        if not self.folder.is_dir():
            return []
        return sorted(
            p
            for p in self.folder.iterdir()
            if _STEP_FOLDER.fullmatch(p.name) and (p / TRAINABLE).is_file() and (p / STATE).is_file()
        )

    def latest(self) -> Path | None:
        """The newest complete checkpoint as rank 0 sees it (the same answer on every rank)."""
        found = self.complete() if self.world.is_main else None
        return broadcast(found[-1] if found else None, self.world)

    def best(self) -> dict | None:
        path = self.folder / BEST
        return json.loads(path.read_text()) if path.is_file() else None

    def save(
        self,
        step: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        state: dict[str, Any],
        rank_state: dict[str, Any],
        best: dict | None = None,
    ) -> Path:
        """Write checkpoint `step`; `state` is shared by the ranks, `rank_state` is this rank's (data position...).

        With `best` ({"metric", "value"}), this checkpoint is the best so far and is kept whatever `keep_last` says.
        """
        inner = unwrap(model)
        tensors = whole_on_cpu(trainable_tensors(inner))
        full_state = {
            **state,
            "step": step,
            "world_size": self.world.world_size,
            "optimizer": self._optimizer_state(inner, optimizer),
            "ranks": gather({**rank_state, "rng": rng_state()}, self.world),
        }
        final = self.folder / f"{step:08d}"
        if self.world.is_main:
            partial = final.with_name(final.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            write_safetensors(tensors, partial / TRAINABLE)
            torch.save(full_state, partial / STATE)
            if final.exists():
                self._remove(final)
            partial.rename(final)
            if best is not None:
                self._write_best({"step": step, **best})
            self._prune()
        barrier(self.world)
        return final

    def load(self, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
        """Load tensors and optimiser state into the live objects and restore this rank's RNG states; returns
        (shared state, this rank's state)."""
        state = load_torch_file(  # weights_only=True: a state file that holds any other object is refused
            path / STATE,
            remedy="This toolkit writes only tensors, lists and numbers there (checkpoints of earlier versions held "
            "NumPy arrays): resume from a checkpoint this version wrote, or start the run again.",
        )
        if state["world_size"] != self.world.world_size:
            raise SystemExit(
                f"error: checkpoint {path} was written by {state['world_size']} processes; resume it "
                f"with the same number (got {self.world.world_size}): each keeps its own data position"
            )
        inner = unwrap(model)
        targets = trainable_tensors(inner)
        stored = read_safetensors(path / TRAINABLE)
        if set(stored) != set(targets):
            raise SystemExit(
                f"error: checkpoint {path / TRAINABLE} does not match the model: missing "
                f"{sorted(set(targets) - set(stored))[:5]}, unexpected {sorted(set(stored) - set(targets))[:5]}"
            )
        with torch.no_grad():
            for name, target in targets.items():
                target.copy_(_place_like(stored[name], target))
        self._load_optimizer_state(inner, optimizer, state["optimizer"])
        mine = state["ranks"][self.world.rank]
        set_rng_state(mine["rng"])
        return state, mine

    @staticmethod
    def _optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        if not is_sharded(model):
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(
            model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )

    @staticmethod
    def _load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict) -> None:
        if not is_sharded(model):
            optimizer.load_state_dict(saved)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, saved, options=StateDictOptions(full_state_dict=True))

    def _write_best(self, best: dict) -> None:
        temporary = self.folder / (BEST + ".tmp")
        temporary.write_text(json.dumps(best) + "\n")
        temporary.replace(self.folder / BEST)

    def _prune(self) -> None:
        """Keep the newest `keep_last` checkpoints and the best one."""
        best = self.best()
        keep = {p.name for p in self.complete()[-self.keep_last :]}
        if best is not None:
            keep.add(f"{best['step']:08d}")
        for path in self.complete():
            if path.name not in keep:
                self._remove(path)

    @staticmethod
    def _remove(path: Path) -> None:
        doomed = path.with_name(path.name + ".deleting")
        shutil.rmtree(doomed, ignore_errors=True)
        path.rename(doomed)
        shutil.rmtree(doomed)


def _place_like(full: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A stored full tensor shaped as `target` is: this rank's shard for an FSDP DTensor, else as it is."""
    if hasattr(target, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full.to(target.dtype), target.device_mesh, target.placements)
    return full.to(target.device, target.dtype)


def resume_point(cfg: DictConfig, checkpoints: Checkpoints, run_dir: Path) -> Path | None:
    """The checkpoint to continue: `resume=auto` the newest complete one in the run directory (none: start
    fresh), `resume=PATH` that checkpoint folder, `resume=null` none (a run directory with checkpoints is refused)."""
    if cfg.resume in (None, False):
        if checkpoints.complete():
            raise SystemExit(
                f"error: {run_dir} already holds checkpoints; continue it with resume=auto or choose "
                "another run directory"
            )
        return None
    if cfg.resume == "auto":
        return checkpoints.latest()
    folder = Path(cfg.resume).expanduser()
    if folder not in checkpoints.complete():
        raise SystemExit(
            f"error: resume={folder}: not a complete checkpoint of {run_dir} "
            f"(complete: {[p.name for p in checkpoints.complete()] or 'none'})"
        )
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
        raise SystemExit(
            f"error: resuming {run_dir} with other settings than its config.yaml:\n  "
            + "\n  ".join(changes)
            + "\nresume with the run's own overrides"
        )


@dataclass
class RunFiles:
    """The run directory's checkpoints, the one to resume from (None: a fresh start), and the run's log."""

    checkpoints: Checkpoints
    resume_from: Path | None
    log: RunLog


def open_run(cfg: DictConfig, run_dir: Path, world: World) -> RunFiles:
    """Open a run directory; the run's log drops the records a killed attempt wrote past the checkpoint it resumes
    from. Writes config.yaml for a fresh run (a resumed one must match it)."""
    checkpoints = Checkpoints(run_dir, world, keep_last=cfg.train.keep_checkpoints)
    resume_from = resume_point(cfg, checkpoints, run_dir)
    if resume_from is not None:
        check_same_config(cfg, run_dir)
    elif world.is_main:
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    # resume=auto before any checkpoint was written starts over: the killed attempt's records are dropped.
    resume_step = int(resume_from.name) if resume_from is not None else (0 if cfg.resume == "auto" else None)
    return RunFiles(checkpoints, resume_from, RunLog(run_dir, world, cfg.train.tensorboard, resume_step=resume_step))
