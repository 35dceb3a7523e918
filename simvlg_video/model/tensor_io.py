"""Reading tensor files without running their code, and loading them into a model with every name and shape checked.

Files are opened lazily: a safetensors file or a zip-format torch file is memory-mapped, so a tensor's bytes are
read only when it is copied into the model, and names and shapes can be checked without reading any data.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

log = logging.getLogger(__name__)


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


class NotATensorFile(ValueError):
    """A file given as weights is not a tensor file this toolkit reads (or is damaged)."""


def check_tensors(expected: Mapping[str, torch.Size], found: Mapping[str, torch.Tensor], source: str) -> None:
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


def copy_into(
    module: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    source: str,
    expected: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Copy `tensors` into `module`'s state-dict entries (cast to each target's dtype) after checking that they are
    exactly `expected` (default: the module's whole state dict) by name and shape."""
    targets = dict(module.state_dict(keep_vars=True))
    wanted = targets if expected is None else expected
    check_tensors({name: t.shape for name, t in wanted.items()}, tensors, source)
    with torch.no_grad():
        for name, tensor in tensors.items():
            targets[name].copy_(tensor)


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file or a torch state dict (.pth/.pt/.bin), memory-mapped where the format allows.

    A torch file is loaded with `weights_only=True` (no code runs); one whose values are not all tensors is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    obj = load_torch_file(path)
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise NotATensorFile(f"{path} does not hold a plain state dict of tensors (found {type(obj).__name__})")
    return dict(obj)


def write_safetensors(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """`safetensors.torch.save_file`, with the permissions any new file gets (safetensors writes 0600, which would
    hide a model directory from the other users of a shared cluster)."""
    save_file(dict(tensors), path)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file (memory-mapped, so untouched tensors cost nothing)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            # keys(): a handle is not iterable
            return {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except Exception as error:  # safetensors raises its own error types for damaged headers
        raise NotATensorFile(f"{path} is not a readable safetensors file ({_first_line(error)})") from None


def load_torch_file(path: Path, allow_pickle: bool = False) -> object:
    """`torch.load` of a checkpoint file, memory-mapped when it is in the zip format, with errors a user can act on.

    `allow_pickle=True` is UNSAFE (unpickling can run code from the file): only for a file you trust whose extra
    entries (e.g. a pickled config object) the safe loader refuses.
    """
    if path.stat().st_size == 0:
        raise NotATensorFile(f"{path} is empty (0 bytes), not a checkpoint")
    with path.open("rb") as handle:
        head = handle.read(9)
    if len(head) == 9 and head[8:9] == b"{" and not head.startswith(b"PK"):
        raise NotATensorFile(f"{path} is a safetensors file; give it a .safetensors name")
    mmap = head.startswith(b"PK\x03\x04")  # the zip format torch.save writes since 1.6 can be mapped
    if not mmap and not head.startswith(b"\x80"):  # nor the legacy format, a pickle stream
        raise NotATensorFile(
            f"{path} is not a torch checkpoint: it starts with {head[:8]!r}, neither the zip "
            "header nor the pickle header torch.save writes"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle, mmap=mmap)
    except pickle.UnpicklingError as error:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if refused is None or allow_pickle:
            raise NotATensorFile(f"{path} is not a torch checkpoint (its pickle data cannot be read)") from None
        raise NotATensorFile(
            f"{path} holds objects besides tensors ({refused.group(1)}), which the safe loader refuses to unpickle. "
            "If you trust the file, allow it with allow_pickle=true (UNSAFE: unpickling can run code from the "
            "file), or re-save only its tensors: torch.save({'model': ckpt['model']}, new_path)."
        ) from None
    except Exception as error:  # torch raises several types (EOFError, RuntimeError, ...) for non-checkpoint files
        raise NotATensorFile(
            f"{path} is not a torch checkpoint ({type(error).__name__}: {_first_line(error)})"
        ) from None


def _first_line(error: BaseException) -> str:
    """The gist of an error: its first line."""
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__
