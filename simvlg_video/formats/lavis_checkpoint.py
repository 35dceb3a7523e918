"""Import the reference (LAVIS-style SimVLG) image or video checkpoint as our model directory.

The reference's training checkpoint is `torch.save({"model": state_dict, "optimizer": ..., "config": ..., ...})`
holding only the trainable tensors; the frozen parts come from BLIP-2's `eva_vit_g.pth`
and a local Hugging Face LLM folder. Names, reference -> ours:

    VLconnector.*                                  -> connector.*   (Hugging Face BertModel names on both sides)
    ln_vision.*, VL_proj.*, opt_proj.*             -> unchanged
    visual_encoder.blocks.{i}.temporal_merge.*     -> vit.blocks.{i}.temporal_merge.*   (video checkpoints)

Tensors the captioner has no use for (`temp`, `vision_proj.*`, `text_proj.*`, the connector's word embeddings,
pooler and position-id buffer) are ignored with one log line; anything else that does not fit is refused with the
missing, unexpected and mis-shaped names, spelled as the checkpoint spells them.

Importing checks; it does not build. The captioner is built on the meta device (names and shapes only), the ViT
file and the checkpoint are memory-mapped, so their names and shapes are checked without reading their data, and
only the checkpoint's tensors are copied into the model directory (beside fingerprints of the frozen files).

    python -m simvlg_video.formats.lavis_checkpoint CKPT.pth --vit-weights eva_vit_g.pth --lm-path opt-2.7b --out DIR
"""

from __future__ import annotations

import argparse
import copy
import logging
import re
import sys
from collections.abc import Mapping
from pathlib import Path

import torch

from simvlg_video.errors import EXIT_STATUS_HELP, InputError, exit_status
from simvlg_video.formats.fingerprint import fingerprint
from simvlg_video.formats.model_dir import build_from_pointers, save_model_dir, stored_tensors
from simvlg_video.formats.tensor_io import NotATensorFile, check_tensors, load_torch_file, read_tensors
from simvlg_video.formats.vit_weights import eva_state_dict
from simvlg_video.model.config import ModelConfig, load_model_config
from simvlg_video.model.vit import build_vit

log = logging.getLogger(__name__)

DEFAULT_MODEL_CONFIG = "simvlg_opt2.7b"
_PLACEMENT = "reference"  # the reference's temporal modules (adapters.placements.PLACEMENTS)

# Our module prefix -> the reference's.
_PREFIXES = {"connector.": "VLconnector.", "vit.blocks.": "visual_encoder.blocks."}
_IGNORED_NAMES = {
    "temp",
    "VLconnector.embeddings.word_embeddings.weight",
    "VLconnector.embeddings.position_ids",
}
_IGNORED_PREFIXES = ("vision_proj.", "text_proj.", "VLconnector.pooler.")
_TEMPORAL_KEY = re.compile(r"^visual_encoder\.blocks\.(\d+)\.temporal_merge\.(.+)$")
# The reference's temporal module: 8 heads. Shapes fix the query/key width but not the number of heads.
REFERENCE_TEMPORAL_HEADS = 8


_EXPECTED = (
    "--image-ckpt expects the file the reference's training saves with torch.save ({'model': state_dict, ...}, or a "
    "bare state dict of tensors), or one of our model directories (model.yaml + weights.safetensors)."
)


def _not_a_checkpoint(path: Path, found: str) -> NotATensorFile:
    return NotATensorFile(f"{path} is not a LAVIS-style checkpoint: {found}. {_EXPECTED}")


def read_lavis_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a reference checkpoint file (its "model" entry, or the file itself if it is one), memory-
    mapped. Loads with `torch.load(weights_only=True)`, which runs no code from the file; a file that holds other
    pickled objects is refused (see `tensor_io.load_torch_file`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference checkpoint not found: {path}")
    try:
        obj = load_torch_file(path)
    except NotATensorFile as error:  # not a torch file at all: say what is expected instead
        raise NotATensorFile(f"{str(error).rstrip('.')}. {_EXPECTED}") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        keys = f" with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, Mapping) else ""
        raise _not_a_checkpoint(path, f"it holds a {type(obj).__name__}{keys} but no 'model' state dict")
    not_tensors = sorted(str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise _not_a_checkpoint(path, f"its state dict has entries that are not tensors: {not_tensors[:8]}")
    return dict(obj)


def reference_name(name: str) -> str:
    """Our trainable tensor name -> the reference checkpoint's name for it."""
    for ours, theirs in _PREFIXES.items():
        if name.startswith(ours):
            return theirs + name[len(ours) :]
    return name


def _is_ignored(name: str) -> bool:
    return name in _IGNORED_NAMES or name.startswith(_IGNORED_PREFIXES)


def temporal_layout(state: Mapping[str, torch.Tensor]) -> tuple[list[int], int | None]:
    """Blocks holding `temporal_merge` tensors, and their query/key width (None if no query or key weight)."""
    blocks = sorted({int(m.group(1)) for name in state if (m := _TEMPORAL_KEY.match(name))})
    widths = [
        state[name].shape[0]
        for name in state
        if (m := _TEMPORAL_KEY.match(name)) and m.group(2) in ("query.weight", "key.weight")
    ]
    return blocks, (widths[0] if widths else None)


def import_lavis_checkpoint(
    ckpt: str | Path,
    vit_weights: str | Path,
    lm_path: str | Path,
    model_cfg: ModelConfig,
    out_dir: str | Path,
    temporal_heads: int = REFERENCE_TEMPORAL_HEADS,
) -> Path:
    """Check a reference checkpoint against the captioner `model_cfg` describes on the given frozen parts, and write
    it as a model directory at `out_dir`.

    A video checkpoint (temporal module tensors) gets the reference placement in exactly the blocks that have them,
    with the query/key width read from the tensors and `temporal_heads` heads (the file does not record it).
    """
    if model_cfg.connector.kind != "tome":
        raise ValueError(
            f"the model config for a SimVLG checkpoint needs connector.kind tome, got {model_cfg.connector.kind!r}"
        )
    ckpt, vit_weights, lm_path = (Path(p).expanduser().resolve() for p in (ckpt, vit_weights, lm_path))
    state = read_lavis_checkpoint(ckpt)
    ignored = sorted(name for name in state if _is_ignored(name))
    found = {name: tensor for name, tensor in state.items() if not _is_ignored(name)}

    cfg = copy.deepcopy(model_cfg)
    cfg.vit.weights, cfg.lm.path, cfg.frozen = str(vit_weights), str(lm_path), {}
    blocks, qk_dim = temporal_layout(found)
    if blocks:
        every = blocks == list(range(len(_meta_vit(cfg).blocks)))
        cfg.adapter = {
            "name": _PLACEMENT,
            "blocks": "all" if every else blocks,
            "qk_dim": qk_dim or 256,
            "num_heads": temporal_heads,
        }
    model = build_from_pointers(cfg, ckpt.parent, meta=True)
    _check_vit_file(vit_weights, cfg)

    targets = {reference_name(name): t for name, t in stored_tensors(model, cfg).items()}
    for name, tensor in found.items():  # the reference stores the gate as () or (1,)
        if name.endswith("temporal_merge.alpha") and name in targets and tensor.numel() == 1:
            found[name] = tensor.reshape(targets[name].shape)
    widths = (
        f"a ViT of width {model.vit.embed_dim}, a connector of width {model.VL_proj.out_features} and an LLM of "
        f"width {model.opt_proj.out_features} from {lm_path}"
    )
    check_tensors({name: t.shape for name, t in targets.items()}, found, f"{ckpt} (the model has {widths})")
    if ignored:
        log.info("%s: ignored %d tensors the captioner does not use: %s", ckpt, len(ignored), ", ".join(ignored))
    cfg.frozen = {"vit": fingerprint(vit_weights), "lm": fingerprint(lm_path)}
    ours = {name: found[reference_name(name)] for name in stored_tensors(model, cfg)}
    return save_model_dir(None, cfg, out_dir, tensors=ours)


def _meta_vit(cfg: ModelConfig) -> torch.nn.Module:
    with torch.device("meta"):
        return build_vit(cfg.vit.preset, **cfg.vit.overrides)


def _check_vit_file(path: Path, cfg: ModelConfig) -> None:
    """The ViT weights file's names and shapes against the ViT `cfg` describes (no data is read)."""
    vit = _meta_vit(cfg)
    tensors = eva_state_dict(read_tensors(path), len(vit.blocks), str(path))
    check_tensors({name: t.shape for name, t in vit.state_dict().items()}, tensors, str(path))


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        description=__doc__, epilog=EXIT_STATUS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("ckpt", type=Path, help="the reference's training checkpoint (.pth)")
    parser.add_argument("--vit-weights", type=Path, required=True, help="BLIP-2's eva_vit_g.pth")
    parser.add_argument("--lm-path", type=Path, required=True, help="local Hugging Face folder of the LLM")
    parser.add_argument("--model-config", default=DEFAULT_MODEL_CONFIG, help="name in configs/model/ or a .yaml")
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out = import_lavis_checkpoint(
            args.ckpt, args.vit_weights, args.lm_path, load_model_config(args.model_config), args.out
        )
    except (ValueError, FileNotFoundError) as error:  # a file that is not what it was given as, or is missing
        raise InputError(str(error)) from None
    print(f"wrote {out}")
    return out


def cli() -> int:
    """`python -m simvlg_video.formats.lavis_checkpoint`: the exit status."""
    return exit_status(main)


if __name__ == "__main__":
    sys.exit(cli())
