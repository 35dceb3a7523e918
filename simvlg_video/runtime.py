"""Small pieces every entry point needs: device choice, seeding, the metrics log, `--flag` to Hydra override."""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

import numpy as np
import torch


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
