"""Load a frozen ViT's weights: our own safetensors, BLIP-2's EVA ViT-g state dict (`eva_vit_g.pth`), the
`visual_encoder.*` part of a LAVIS checkpoint (`{"model": state_dict}`, e.g. a BLIP-2 OPT `.pth` that holds its ViT),
or the `vision_model.*` part of a Hugging Face BLIP-2 folder (names mapped by `simvlg_video.formats.hf_blip2`).

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

from simvlg_video.formats.hf_blip2 import vision_tensors
from simvlg_video.formats.tensor_io import NotATensorFile, copy_into, load_torch_file, read_tensors

log = logging.getLogger(__name__)

VISUAL_PREFIX = "visual_encoder."
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")


def strip_visual_prefix(tensors: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Drop a leading `visual_encoder.` from every key that has one; a name present in both forms is an error."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        bare = name[len(VISUAL_PREFIX) :] if name.startswith(VISUAL_PREFIX) else name
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
            source,
            depth - 1,
            ", ".join(map(str, sorted(dropped_blocks))),
        )
    return kept


def eva_state_dict(tensors: Mapping[str, torch.Tensor], depth: int, source: str) -> dict[str, torch.Tensor]:
    """BLIP-2 EVA ViT tensors -> the state dict of a timm `Eva` with `depth` blocks (names unchanged otherwise)."""
    return drop_blocks_past(strip_visual_prefix(tensors, source), depth, source)


def vit_source_tensors(path: str | Path, depth: int) -> dict[str, torch.Tensor]:
    """The EVA state dict (`depth` blocks) a ViT weights source holds, memory-mapped where the format allows: a
    Hugging Face BLIP-2 folder, a LAVIS checkpoint's `visual_encoder.*` entries, or a plain state dict file."""
    path = Path(path)
    source = str(path)
    if path.is_dir():
        return drop_blocks_past(vision_tensors(path), depth, source)
    if path.suffix == ".safetensors" or not path.is_file():
        return eva_state_dict(read_tensors(path), depth, source)
    obj = load_torch_file(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):  # a whole model's checkpoint
        obj = {name: t for name, t in obj["model"].items() if name.startswith(VISUAL_PREFIX)}
        if not obj:
            raise NotATensorFile(f"{path} is a model checkpoint without a ViT (no {VISUAL_PREFIX}* entries)")
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise NotATensorFile(f"{path} does not hold a plain state dict of tensors (found {type(obj).__name__})")
    return eva_state_dict(dict(obj), depth, source)


def load_vit_weights(vit: nn.Module, path: str | Path) -> None:
    """Load `path` (see `vit_source_tensors`) into `vit` (an unpatched ViT), names and shapes checked; tensors are
    read from the memory-mapped files as they are copied, in `vit`'s dtype."""
    copy_into(vit, vit_source_tensors(path, len(vit.blocks)), str(path))
