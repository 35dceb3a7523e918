"""Small pieces every entry point needs: device choice, seeding, the metrics log, `--flag` to Hydra override."""

from __future__ import annotations

import json
import random
from datetime import datetime
import re
import sys
from pathlib import Path

import numpy as np
import torch

from simvlg_video.train.distributed import World, broadcast


def pick_device(name: str) -> torch.device:
    """`auto` is CUDA when present, else CPU; asking for CUDA without a GPU is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={name} was asked for but no CUDA GPU is available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class JsonlLog:
    """Appends one JSON object per line (RUN_DIR/metrics.jsonl), flushed at once so a crash loses nothing."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def flags_to_overrides(argv: list[str], flags: dict[str, str]) -> list[str]:
    """Rewrite `--image-ckpt PATH` / `--image-ckpt=PATH` style flags into Hydra `key=value` overrides."""
    out: list[str] = []
    args = iter(argv)
    for arg in args:
        name, has_value, value = arg.partition("=")
        if name in flags:
            if not has_value:
                value = next(args, None)
                if value is None:
                    sys.exit(f"error: {name} needs a value")
            quoted = value if re.fullmatch(r"[\w./~-]+", value) else "'" + value.replace("'", "\\'") + "'"
            out.append(f"{flags[name]}={quoted}")
        else:
            out.append(arg)
    return out


def torchrun_overrides(arguments: list[str], world: World) -> list[str]:
    """Hydra overrides that make the processes of one torchrun launch share rank 0's timestamped output folder
    (unless one is given), with Hydra's own files and log written by rank 0 only."""
    if not world.distributed:
        return []
    stamp = broadcast(datetime.now().strftime("%Y-%m-%d_%H-%M-%S"), world)
    given = {argument.split("=", 1)[0].lstrip("+~") for argument in arguments}
    extra = [f"{key}={folder}/{stamp}" for key, folder in (("hydra.run.dir", "runs"), ("hydra.sweep.dir", "multirun"))
             if key not in given]
    if not world.is_main:
        extra += ["hydra.output_subdir=null", f"hydra.job.name=adapt_rank{world.rank}"]
    return extra
