"""Training checkpoints: RUN_DIR/checkpoints/<step>/ holds everything a run needs to continue exactly.

```
checkpoints/00001000/trainable.safetensors   trainable tensors (full, also when FSDP shards them)
checkpoints/00001000/training_state.pt       step, world size, optimiser (full, also under FSDP), schedule, grad
                                             scaler, guards, best score, and per rank: data position, skipped
                                             samples and RNG states (Python, NumPy, torch CPU/CUDA)
checkpoints/best.json                        {"step", "metric", "value"} of the best validation score so far
checkpoints/abandoned/<time>/<step>/         checkpoints newer than the one a run was resumed from (kept, unused)
```
A folder is written as `<step>.partial`; its files and the folder are flushed to the disk (fsync) before it is
renamed, and the rename is flushed before any older checkpoint is pruned. A machine that loses power at any instant
comes back with complete checkpoints and, at most, a `.partial` or `.deleting` folder that is never chosen. Rank 0
writes; every rank takes part in gathering (FSDP tensors, per-rank state). On resume, a checkpoint that cannot be
loaded is reported and the one before it is tried, with every rank agreeing on the one used.

Nothing in a checkpoint ties it to the number of processes that wrote it: tensors and optimiser state are whole
(FSDP's are gathered on saving and sharded again over the new processes on loading), the data position is the
run's, and a process the interrupted run did not have starts its RNG streams from (seed, step, rank).
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from simvlg_video.durable import fsync_folder, fsync_tree, write_text_atomically
from simvlg_video.errors import UserError
from simvlg_video.formats.tensor_io import (
    NotATensorFile,
    StateDictMismatch,
    check_tensors,
    load_torch_file,
    read_safetensors,
    write_safetensors,
)
from simvlg_video.model.parallel import is_sharded, unwrap, whole_on_cpu
from simvlg_video.world import World, barrier, broadcast, gather

log = logging.getLogger(__name__)

TRAINABLE = "trainable.safetensors"
STATE = "training_state.pt"
BEST = "best.json"
ABANDONED = "abandoned"
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
        state["cuda"] = torch.cuda.get_rng_state()  # this process's device: a node may have other GPU counts later
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, key, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, np.asarray(key, dtype=np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if isinstance(cuda, (list, tuple)):  # written as every visible device's state
            cuda = cuda[torch.cuda.current_device()]
        torch.cuda.set_rng_state(cuda)


def seed_new_rank(seed: int, step: int, rank: int) -> None:
    """RNG streams for a process the interrupted run did not have (it resumes on more processes): seeded from
    (seed, step, rank), so that the resumed run is reproducible, though not the interrupted run's draws."""
    words = np.random.SeedSequence([seed, step, rank, 0x52]).generate_state(4, dtype=np.uint32).tolist()
    random.seed(words[0])
    np.random.seed(words[1])
    torch.manual_seed(words[2] << 32 | words[3])  # CPU and every CUDA device


def trainable_tensors(model: nn.Module) -> dict[str, nn.Parameter]:
    """The live parameters that train (FSDP shards as they are)."""
    return {name: p for name, p in unwrap(model).named_parameters() if p.requires_grad}


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be resumed from: damaged or cut-short files, or contents that do not fit the run;
    the message names the folder and why."""


class ResumeImpossible(CheckpointError):
    """The run cannot continue on this number of processes or with these settings, whichever checkpoint it starts
    from (an older one would refuse for the same reason); raised by a LocalRestore, it ends the search at once."""


@dataclass
class _Stored:
    """A checkpoint read and checked, not yet applied to the live objects."""

    state: dict
    tensors: dict[str, torch.Tensor]


# Restores what lives outside the model and optimiser (schedule, guards, data position) from (shared state, this
# rank's state, None for a rank the interrupted run did not have); raises ValueError, KeyError or TypeError when it
# does not fit, ResumeImpossible when no checkpoint could. The shared state's "ranks" holds every saved rank's state.
LocalRestore = Callable[[dict, dict | None], None]


class Checkpoints:
    """Saving, finding, loading and setting aside the checkpoints of one run directory."""

    def __init__(self, run_dir: Path, world: World = World(), keep_last: int = 2, seed: int = 0):
        # keep_last=1 is safe: the old checkpoint is removed only once the new one is on the disk. Falling back from
        # a damaged newest checkpoint needs a second one.
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.folder = Path(run_dir) / "checkpoints"
        self.world = world
        self.keep_last = keep_last
        self.seed = seed  # the run's: RNG streams of processes a resumed run adds

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
        found = self.newest_first()
        return found[0] if found else None

    def newest_first(self) -> list[Path]:
        """The complete checkpoints, newest first, as rank 0 sees them (the same list on every rank)."""
        return broadcast(self.complete()[::-1] if self.world.is_main else None, self.world)

    def best(self) -> dict | None:
        path = self.folder / BEST
        if not path.is_file():
            return None
        try:
            best = json.loads(path.read_text())
            int(best["step"])
        except (ValueError, KeyError, TypeError) as error:
            log.warning("ignoring %s: not the best checkpoint's record (%s)", path, error)
            return None
        return best

    def save(
        self,
        step: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        state: dict[str, Any],
        rank_state: dict[str, Any],
        best: dict | None = None,
        prune: bool = True,
    ) -> Path:
        """Write checkpoint `step`; `state` is shared by the ranks, `rank_state` is this rank's (data position...).

        With `best` ({"metric", "value"}), this checkpoint is the best so far and is kept whatever `keep_last` says.
        `prune=False` keeps every older checkpoint (a save of a state that may be bad).
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
            fsync_tree(partial)  # the files' bytes are on the disk before the name says they are complete
            if final.exists():
                self._remove(final)
            partial.rename(final)
            fsync_folder(self.folder)  # the rename itself is on the disk before anything older goes
            if best is not None:
                self._write_best({"step": step, **best})
            if prune:
                self._prune()
        barrier(self.world)
        return final

    def load(self, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict | None]:
        """Load tensors and optimiser state into the live objects and restore this rank's RNG states; returns
        (shared state, this rank's state: None for a rank the checkpoint's run did not have). A checkpoint that
        cannot be read or does not fit raises CheckpointError before anything is changed."""
        return self._apply(self._read(path, model, optimizer), model, optimizer)

    def restore(
        self,
        candidates: list[Path],
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        restore_local: LocalRestore | None = None,
    ) -> tuple[Path, dict, dict | None]:
        """Load the first of `candidates` (newest first) that loads on every rank; returns (its folder, shared
        state, this rank's state or None). Each one that does not is reported (folder and why) and the next is
        tried; when none loads, one CheckpointError names them all.

        Every rank reads and checks a candidate (and `restore_local` restores what lives on it alone) before the
        ranks compare verdicts; only an agreed one is applied, so collectives (FSDP) stay matched. A
        ResumeImpossible on any rank is raised on every rank at once, without trying older candidates.
        """
        failures = []
        for path in candidates:
            stored, error, final = None, None, False
            try:
                stored = self._read(path, model, optimizer)
                if restore_local is not None:
                    restore_local(stored.state, self._rank_state(stored.state))
            except ResumeImpossible as refusal:
                error, final = str(refusal), True
            except CheckpointError as failure:
                error = str(failure)
            except (ValueError, KeyError, TypeError) as failure:
                error = f"{path / STATE} does not fit this run ({type(failure).__name__}: {failure})"
            verdicts = [verdict for verdict in gather((error, final), self.world) if verdict[0] is not None]
            if not verdicts:
                state, mine = self._apply(stored, model, optimizer)
                return path, state, mine
            refusals = [message for message, final in verdicts if final]
            if refusals:
                raise ResumeImpossible(refusals[0])
            failures.append(verdicts[0][0])
            log.warning("cannot resume from %s: %s", path, failures[-1])
        raise CheckpointError(
            f"no checkpoint in {self.folder} can be resumed from:\n  " + "\n  ".join(failures)
            if failures
            else f"no complete checkpoint in {self.folder}"
        )

    def set_aside_newer(self, kept: Path) -> Path | None:
        """Move every complete checkpoint newer than `kept` into checkpoints/abandoned/<time>/, so that the run
        continues from `kept` (later saves and `resume=auto` see only its branch) and nothing is deleted. Rank 0
        moves; returns the folder they went to (None: none was newer) on every rank."""
        moved_to = None
        if self.world.is_main:
            newer = [p for p in self.complete() if p.name > kept.name]
            if newer:
                stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
                moved_to = self.folder / ABANDONED / stamp
                suffix = 0
                while moved_to.exists():
                    suffix += 1
                    moved_to = self.folder / ABANDONED / f"{stamp}_{suffix}"
                moved_to.mkdir(parents=True)
                for path in newer:
                    path.rename(moved_to / path.name)
                fsync_folder(moved_to)
                fsync_folder(moved_to.parent)
                fsync_folder(self.folder)
                log.warning(
                    "moved the checkpoints newer than %s (%s) to %s: the run continues from %s",
                    kept.name,
                    ", ".join(p.name for p in newer),
                    moved_to,
                    kept.name,
                )
        return broadcast(moved_to, self.world)

    def record_best(self, best: dict | None) -> None:
        """Make checkpoints/best.json say `best` (the best of the state a run continues from; None: no best)."""
        if not self.world.is_main or best == self.best():
            return
        if best is None:
            (self.folder / BEST).unlink(missing_ok=True)
            fsync_folder(self.folder)
        else:
            self._write_best(best)

    def _read(self, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> _Stored:
        """Read a checkpoint folder and check that it fits this run, changing nothing."""
        try:
            state = self._read_state(path)
        except NotATensorFile as error:  # it names the file and the objects it holds
            raise CheckpointError(str(error)) from None
        except Exception as error:  # a damaged file fails in the zip reader's or the unpickler's own error types
            reason = str(error).strip().splitlines()[0] if str(error).strip() else "no message"
            raise CheckpointError(f"{path / STATE} cannot be read ({type(error).__name__}: {reason})") from None
        needed = {"step", "world_size", "optimizer", "ranks"}
        if not isinstance(state, dict) or not needed <= state.keys():
            found = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise CheckpointError(f"{path / STATE} is not a training state (expected {sorted(needed)}, found {found})")
        if not isinstance(state["ranks"], list) or len(state["ranks"]) != state["world_size"]:
            raise CheckpointError(f"{path / STATE} holds no state per process of the {state['world_size']} it names")
        tensors = read_trainable(path, model)
        saved = [len(group["params"]) for group in state["optimizer"].get("param_groups", [])]
        live = [len(group["params"]) for group in optimizer.param_groups]
        if saved != live:
            raise CheckpointError(
                f"{path / STATE}: the optimiser state holds parameter groups of {saved} tensors, the run {live}"
            )
        return _Stored(state, tensors)

    @staticmethod
    def _read_state(path: Path) -> Any:
        return load_torch_file(  # weights_only=True: a state file that holds any other object is refused
            path / STATE,
            remedy="This toolkit writes only tensors, lists and numbers there (checkpoints of earlier versions held "
            "NumPy arrays): resume from a checkpoint this version wrote, or start the run again.",
        )

    def _apply(self, stored: _Stored, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
        inner = unwrap(model)
        copy_trainable(stored.tensors, inner)
        self._load_optimizer_state(inner, optimizer, stored.state["optimizer"])
        mine = self._rank_state(stored.state)
        if mine is not None:
            set_rng_state(mine["rng"])
        else:
            seed_new_rank(self.seed, int(stored.state["step"]), self.world.rank)
        return stored.state, mine

    def _rank_state(self, state: dict) -> dict | None:
        """This rank's saved state; None when the checkpoint's run had fewer processes than this one."""
        return state["ranks"][self.world.rank] if self.world.rank < len(state["ranks"]) else None

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
        """Load a whole optimiser state: one keyed by parameter names (FSDP's, gathered) is sharded over this run's
        processes, or loaded whole onto one; one keyed by position (one process or DDP) loads as it is."""
        named = any(isinstance(name, str) for group in saved.get("param_groups", []) for name in group["params"])
        if not named and not is_sharded(model):
            optimizer.load_state_dict(saved)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, saved, options=StateDictOptions(full_state_dict=True))

    def _write_best(self, best: dict) -> None:
        write_text_atomically(self.folder / BEST, json.dumps(best) + "\n")

    def _prune(self) -> None:
        """Keep the newest `keep_last` checkpoints and the best one."""
        best = self.best()
        keep = {p.name for p in self.complete()[-self.keep_last :]}
        if best is not None:
            keep.add(f"{best['step']:08d}")
        for path in self.complete():
            if path.name not in keep:
                self._remove(path)

    def _remove(self, path: Path) -> None:
        """Delete a checkpoint folder: renamed to `.deleting` first (on the disk), so a half-deleted folder is never
        taken for a complete one."""
        doomed = path.with_name(path.name + ".deleting")
        shutil.rmtree(doomed, ignore_errors=True)
        path.rename(doomed)
        fsync_folder(self.folder)
        shutil.rmtree(doomed)


def read_trainable(path: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensors of checkpoint folder `path`, checked against `model`'s trainable parameters: a
    missing, unexpected or mis-shaped tensor is a CheckpointError naming the file and the tensor."""
    try:
        tensors = read_safetensors(path / TRAINABLE)
        targets = trainable_tensors(unwrap(model))
        check_tensors({name: t.shape for name, t in targets.items()}, tensors, str(path / TRAINABLE))
    except (NotATensorFile, StateDictMismatch) as error:
        raise CheckpointError(str(error)) from None
    return tensors


def copy_trainable(tensors: dict[str, torch.Tensor], model: nn.Module) -> None:
    """Checked tensors (`read_trainable`) into `model`'s trainable parameters, FSDP shards included."""
    with torch.no_grad():
        for name, target in trainable_tensors(unwrap(model)).items():
            target.copy_(_place_like(tensors[name], target))


def _place_like(full: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A stored full tensor shaped as `target` is: this rank's shard for an FSDP DTensor, else as it is."""
    if hasattr(target, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full.to(target.dtype), target.device_mesh, target.placements)
    return full.to(target.device, target.dtype)
