"""Training checkpoints: RUN_DIR/checkpoints/<step>/ with trainable tensors and optimiser/schedule/RNG state.

A checkpoint folder is written under a temporary name and renamed when complete, so a crash never leaves a
half-written folder that looks finished.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from simvlg_video.model.model_dir import trainable_tensors

TRAINABLE = "trainable.safetensors"
STATE = "training_state.pt"


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: nn.Module,
    trainable: list[str],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    extra: dict | None = None,
) -> Path:
    """Write checkpoint `step` atomically and return its folder."""
    final = run_dir / "checkpoints" / f"{step:08d}"
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in trainable_tensors(model, trainable).items()}
    save_file(tensors, partial / TRAINABLE)
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
        **(extra or {}),
    }
    torch.save(state, partial / STATE)
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    return final
