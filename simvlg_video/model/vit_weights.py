"""Load a frozen ViT's weights file: our own safetensors, or BLIP-2's EVA ViT-g state dict (`eva_vit_g.pth`).

timm's `Eva` uses BLIP-2's tensor names (`blocks.{i}.attn.qkv.weight`, `blocks.{i}.attn.q_bias`, ...; timm keeps the
zero k bias as a non-persistent buffer, so only `q_bias` and `v_bias` are stored, as in BLIP-2). Two differences of
the published file are taken care of here:

* keys may carry a `visual_encoder.` prefix when the ViT was taken from a full model's state dict;
* the file may hold more blocks than the model uses (EVA-g has 40; BLIP-2 builds 39 and ignores the 40th): whole
  blocks past the model's depth are dropped with a log line.

Anything else that does not fit is refused with the names of the missing, unexpected and mis-shaped tensors.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from simvlg_video.model.tensor_io import copy_into, read_tensors

log = logging.getLogger(__name__)

VISUAL_PREFIX = "visual_encoder."
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")


def strip_visual_prefix(tensors: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Drop a leading `visual_encoder.` from every key that has one; a name present in both forms is an error."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        bare = name[len(VISUAL_PREFIX):] if name.startswith(VISUAL_PREFIX) else name
        if bare in out:
            raise ValueError(f"{source} holds {bare!r} both with and without the {VISUAL_PREFIX!r} prefix")
        out[bare] = tensor
    return out


def drop_blocks_past(tensors: Mapping[str, torch.Tensor], depth: int, source: str) -> dict[str, torch.Tensor]:
    """Leave out the tensors of blocks `depth` and above (BLIP-2 uses the first 39 of EVA-g's 40), logging it."""
    kept: dict[str, torch.Tensor] = {}
    dropped_blocks: set[int] = set()
    for name, tensor in tensors.items():
        match = _BLOCK_KEY.match(name)
        if match and int(match.group(1)) >= depth:
            dropped_blocks.add(int(match.group(1)))
        else:
            kept[name] = tensor
    if dropped_blocks:
        log.info(
            "%s: using blocks 0..%d; dropped blocks %s, which the model does not have (as BLIP-2 drops EVA-g's 40th)",
            source, depth - 1, ", ".join(map(str, sorted(dropped_blocks))),
        )
    return kept


def eva_state_dict(tensors: Mapping[str, torch.Tensor], depth: int, source: str) -> dict[str, torch.Tensor]:
    """BLIP-2 EVA ViT tensors -> the state dict of a timm `Eva` with `depth` blocks (names unchanged otherwise)."""
    return drop_blocks_past(strip_visual_prefix(tensors, source), depth, source)


def load_vit_weights(vit: nn.Module, path: str | Path) -> None:
    """Load `path` (.safetensors or a torch state dict, e.g. BLIP-2's `eva_vit_g.pth`) into `vit` (an unpatched
    ViT), names and shapes checked; tensors are read from the memory-mapped file as they are copied, in `vit`'s
    dtype."""
    source = str(path)
    tensors = eva_state_dict(read_tensors(path), len(vit.blocks), source)
    copy_into(vit, tensors, source)


def fill_unsaved_buffers(vit: nn.Module) -> None:
    """After `to_empty`, compute the buffers a state dict does not hold (EVA's zero k bias) with each timm module's
    own `init_non_persistent_buffers`. A buffer that no module fills is an error, never left as uninitialised memory."""
    saved = set(vit.state_dict())
    unsaved = {name for name, _ in vit.named_buffers() if name not in saved}
    for prefix, module in vit.named_modules():
        if hasattr(module, "init_non_persistent_buffers"):
            module.init_non_persistent_buffers()
            unsaved -= {f"{prefix}.{name}" if prefix else name for name, _ in module.named_buffers(recurse=False)}
    if unsaved:
        raise RuntimeError(f"the ViT has buffers that neither its weights file nor its modules fill: {sorted(unsaved)}")

