"""Loading tensors into a model with every key and shape checked, and naming what did not fit."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn


class StateDictMismatch(ValueError):
    """A checkpoint does not fit the model: lists missing, unexpected and mis-shaped tensors."""

    def __init__(self, source: str, missing: list[str], unexpected: list[str], mismatched: list[str]):
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        parts = [f"checkpoint {source} does not fit the model:"]
        for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if names:
                shown = ", ".join(names[:12]) + (f" ... ({len(names)} in all)" if len(names) > 12 else "")
                parts.append(f"  {label}: {shown}")
        super().__init__("\n".join(parts))


def check_tensors(
    expected: Mapping[str, torch.Size], found: Mapping[str, torch.Tensor], source: str
) -> None:
    """Raise StateDictMismatch unless `found` has exactly the `expected` names with the expected shapes."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = [
        f"{name} (expected {tuple(expected[name])}, found {tuple(found[name].shape)})"
        for name in sorted(set(expected) & set(found))
        if tuple(expected[name]) != tuple(found[name].shape)
    ]
    if missing or unexpected or mismatched:
        raise StateDictMismatch(source, missing, unexpected, mismatched)


def load_checked(module: nn.Module, tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy `tensors` into `module`'s parameters and buffers after checking names and shapes exactly."""
    targets = dict(module.state_dict(keep_vars=True))
    check_tensors({name: t.shape for name, t in targets.items()}, tensors, source)
    with torch.no_grad():
        for name, tensor in tensors.items():
            targets[name].copy_(tensor)


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file, or a torch state dict (.pth/.pt/.bin), loaded without executing code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for non-checkpoint files
        raise ValueError(f"{path} is not a readable torch checkpoint: {error}") from error
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a plain state dict of tensors (found {type(obj).__name__})")
    return dict(obj)
