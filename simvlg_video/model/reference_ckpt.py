"""Import the reference (LAVIS-style SimVLG) image or video checkpoint into our VideoCaptioner.

The reference's training checkpoint is `torch.save({"model": state_dict, "optimizer": ..., "config": ..., ...})`
holding only the trainable tensors (REFERENCE.md section 1); the frozen parts come from BLIP-2's `eva_vit_g.pth`
and a local Hugging Face LLM folder. Names, reference -> ours:

    VLconnector.*                                  -> connector.*   (Hugging Face BertModel names on both sides)
    ln_vision.*, VL_proj.*, opt_proj.*             -> unchanged
    visual_encoder.blocks.{i}.temporal_merge.*     -> vit.blocks.{i}.temporal_merge.*   (video checkpoints)

Tensors the captioner has no use for (`temp`, `vision_proj.*`, `text_proj.*`, the connector's word embeddings,
pooler and position-id buffer) are ignored with one log line; anything else that does not fit is refused with the
missing, unexpected and mis-shaped names, spelled as the checkpoint spells them.

    python -m simvlg_video.model.reference_ckpt CKPT.pth --vit-weights eva_vit_g.pth --lm-path opt-2.7b --out DIR

writes the imported model as our model directory (config + trainable tensors + pointers to the frozen files).
"""

from __future__ import annotations

import argparse
import logging
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from simvlg_video.model.captioner import VideoCaptioner
from simvlg_video.model.model_dir import ADAPTERS, build_captioner, save_model_dir, trainable_tensors
from simvlg_video.model.state import check_tensors

log = logging.getLogger(__name__)

MODEL_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "model"
DEFAULT_MODEL_CONFIG = "simvlg_opt2.7b"

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


def _not_a_checkpoint(path: Path, found: str) -> ValueError:
    return ValueError(
        f"{path} is not a reference checkpoint: {found}. --image-ckpt expects the file the reference's training "
        "saves with torch.save ({'model': state_dict, ...}, or a bare state dict of tensors); for a model in our "
        "own format, pass its directory (model.yaml + trainable.safetensors) instead."
    )


def read_reference_checkpoint(path: str | Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The state dict of a reference checkpoint file (its "model" entry, or the file itself if it is one).

    Loads with `torch.load(weights_only=True)`, which runs no code from the file. `allow_pickle=True` is UNSAFE:
    it unpickles arbitrary objects (a file can run any code); use it only for a file you trust whose extra entries
    (e.g. a pickled config object) the safe loader refuses.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference checkpoint not found: {path}")
    with path.open("rb") as handle:
        head = handle.read(9)
    if len(head) == 9 and head[8:9] == b"{" and not head.startswith(b"PK"):
        raise _not_a_checkpoint(path, "it is a safetensors file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as error:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if refused is None:
            raise _not_a_checkpoint(path, f"torch.load failed ({str(error).splitlines()[0]})") from error
        raise ValueError(
            f"{path} holds objects besides tensors ({refused.group(1)}), "
            "which the safe loader (torch.load with weights_only=True) refuses to unpickle. If you trust the file, "
            "load it with allow_pickle=True (UNSAFE: unpickling can run code from the file; on the command line "
            "add allow_pickle=true), or re-save only its tensors: torch.save({'model': ckpt['model']}, new_path)."
        ) from error
    except Exception as error:  # torch raises several types for files that are not torch checkpoints
        raise _not_a_checkpoint(path, f"torch.load failed ({type(error).__name__}: {error})") from error
    return _state_dict_of(obj, path)


def _state_dict_of(obj: object, path: Path) -> dict[str, torch.Tensor]:
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
            return theirs + name[len(ours):]
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


def video_model_config(model_cfg: DictConfig, blocks: list[int], qk_dim: int, num_heads: int) -> DictConfig:
    """`model_cfg` plus the reference adapter in exactly `blocks`, adapters trainable."""
    cfg = OmegaConf.create(OmegaConf.to_container(model_cfg, resolve=True))
    cfg.adapter = {
        "_target_": "simvlg_video.adapters.placements.reference",
        "_partial_": True,
        "blocks": blocks,
        "last_k": None,
        "qk_dim": qk_dim,
        "num_heads": num_heads,
    }
    cfg.trainable = [ADAPTERS, *[name for name in cfg.trainable if name != ADAPTERS]]
    return cfg


def load_model_config(name_or_path: str | Path) -> DictConfig:
    """An architecture config: a name in `simvlg_video/configs/model/` (e.g. simvlg_opt2.7b) or a .yaml path."""
    path = Path(name_or_path).expanduser()
    if path.suffix not in (".yaml", ".yml"):
        path = MODEL_CONFIGS / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in MODEL_CONFIGS.glob("*.yaml"))
        raise FileNotFoundError(f"model config {name_or_path!r} not found (a .yaml path, or one of {known})")
    return OmegaConf.load(path)


def import_reference(
    ckpt: str | Path,
    vit_weights: str | Path,
    lm_path: str | Path,
    model_cfg: DictConfig,
    allow_pickle: bool = False,
    temporal_heads: int = REFERENCE_TEMPORAL_HEADS,
) -> tuple[VideoCaptioner, DictConfig]:
    """Build the captioner `model_cfg` describes on the given frozen parts and load the reference checkpoint into it.

    A video checkpoint (temporal module tensors) gets the reference adapter in exactly the blocks that have them,
    with the query/key width read from the tensors and `temporal_heads` heads (the file does not record it). The
    returned config, with absolute paths to the frozen parts, is the one `save_model_dir` writes beside the weights.
    """
    ckpt, vit_weights, lm_path = (Path(p).expanduser().resolve() for p in (ckpt, vit_weights, lm_path))
    state = read_reference_checkpoint(ckpt, allow_pickle)
    ignored = sorted(name for name in state if _is_ignored(name))
    found = {name: tensor for name, tensor in state.items() if not _is_ignored(name)}

    cfg = OmegaConf.create(OmegaConf.to_container(model_cfg, resolve=True))
    cfg.vit.weights = str(vit_weights)
    cfg.lm.path = str(lm_path)
    blocks, qk_dim = temporal_layout(found)
    if blocks:
        cfg = video_model_config(cfg, blocks, qk_dim or 256, temporal_heads)
    model = build_captioner(cfg, ckpt.parent)
    if blocks and blocks == list(range(len(model.vit.blocks))):
        cfg.adapter.blocks = "all"

    targets = {reference_name(name): t for name, t in trainable_tensors(model, list(cfg.trainable)).items()}
    for name, tensor in found.items():  # the reference stores the gate as () or (1,)
        if name.endswith("temporal_merge.alpha") and name in targets and tensor.numel() == 1:
            found[name] = tensor.reshape(targets[name].shape)
    widths = (
        f"a ViT of width {model.vit.embed_dim}, a connector of width {model.VL_proj.out_features} and an LLM of "
        f"width {model.opt_proj.out_features} from {lm_path}"
    )
    check_tensors({name: t.shape for name, t in targets.items()}, found, f"{ckpt} (the model has {widths})")
    with torch.no_grad():
        for name, tensor in found.items():
            targets[name].copy_(tensor)
    if ignored:
        log.info("%s: ignored %d tensors the captioner does not use: %s", ckpt, len(ignored), ", ".join(ignored))
    return model, cfg


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt", type=Path, help="the reference's training checkpoint (.pth)")
    parser.add_argument("--vit-weights", type=Path, required=True, help="BLIP-2's eva_vit_g.pth")
    parser.add_argument("--lm-path", type=Path, required=True, help="local Hugging Face folder of the LLM")
    parser.add_argument("--model-config", default=DEFAULT_MODEL_CONFIG, help="name in configs/model/ or a .yaml")
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    parser.add_argument("--allow-pickle", action="store_true", help="UNSAFE: unpickle non-tensor entries")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        model, cfg = import_reference(
            args.ckpt, args.vit_weights, args.lm_path, load_model_config(args.model_config), args.allow_pickle
        )
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None
    out = save_model_dir(model, cfg, args.out)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
