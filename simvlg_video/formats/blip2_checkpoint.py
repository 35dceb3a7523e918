"""Import a BLIP-2 OPT image captioner as our model directory, from either published layout.

* A **Hugging Face folder** (`Blip2ForConditionalGeneration.save_pretrained`, with the OPT tokenizer at its root). The
  architecture is read from its config.json. The model directory points at the folder for both frozen parts (the ViT
  is its `vision_model.*`, the LLM its `language_model.*`, both read in place at load time), and stores the rest:
    vision_model.post_layernorm.* -> ln_vision.*        query_tokens -> connector.query_tokens
    qformer.*                     -> connector.qformer.* language_projection.* -> opt_proj.*
* A **LAVIS `blip2_opt` checkpoint** (`torch.save({"model": state_dict, ...})`) with the OPT's Hugging Face folder
  (`lm_path`) and, unless the file holds `visual_encoder.*` itself, BLIP-2's `eva_vit_g.pth` (`vit_weights`). The
  architecture comes from a model config (default `configs/model/blip2_opt2.7b.yaml`). Names:
    ln_vision.*, opt_proj.*, query_tokens      -> ln_vision.*, opt_proj.*, connector.query_tokens
    Qformer.bert.embeddings.LayerNorm.*        -> connector.qformer.layernorm.*
    Qformer.bert.encoder.layer.{i}.X.self.*    -> connector.qformer.encoder.layer.{i}.X.attention.* (X: attention,
                                                  crossattention)
    Qformer.bert.encoder.layer.{i}.* (other)   -> connector.qformer.encoder.layer.{i}.*
  The Q-Former's text side (`Qformer.cls.*`, word and position embeddings, each layer's `intermediate`/`output`) and
  the representation stage's heads (`vision_proj`, `text_proj`, `itm_head`, `temp`) are ignored with one log line.

As the SimVLG import does, this checks and copies only what it must: the captioner is built on the meta device, the
files are memory-mapped, every name and shape is checked (missing, unexpected and mis-shaped tensors are named as the
source spells them), and only the tensors that are not frozen are written, beside fingerprints of the frozen sources.

    python -m simvlg_video.formats.blip2_checkpoint BLIP2_FOLDER --out DIR [--prompt "a photo of"]
    python -m simvlg_video.formats.blip2_checkpoint CKPT.pth --lm-path opt-2.7b [--vit-weights eva_vit_g.pth] --out DIR
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
from transformers import Blip2Config

from simvlg_video.errors import EXIT_STATUS_HELP, InputError, exit_status
from simvlg_video.formats.fingerprint import fingerprint
from simvlg_video.formats.hf_blip2 import (
    LANGUAGE,
    VISION,
    eva_from_hf,
    folder_tensors,
    hf_vision_shapes,
    is_blip2_folder,
    read_blip2_config,
    tied_names,
)
from simvlg_video.formats.lavis_checkpoint import read_lavis_checkpoint
from simvlg_video.formats.model_dir import build_from_pointers, save_model_dir, stored_tensors
from simvlg_video.formats.tensor_io import check_tensors
from simvlg_video.formats.vit_weights import VISUAL_PREFIX, vit_source_tensors
from simvlg_video.model.config import ModelConfig, load_model_config
from simvlg_video.model.lm import LMConfig
from simvlg_video.model.qformer import QFormerConfig
from simvlg_video.model.vit import VitConfig

log = logging.getLogger(__name__)

DEFAULT_MODEL_CONFIG = "blip2_opt2.7b"
EVA_EPS = 1e-6  # the LayerNorm eps of timm's EVA blocks (and of BLIP-2's EVA ViT-g)
# eva_vit_g's constructor arguments; a folder's vision config is stored as the arguments that differ.
_EVA_G = dict(img_size=224, patch_size=14, embed_dim=1408, depth=39, num_heads=16, mlp_ratio=6144 / 1408)

_HF = {
    "ln_vision.": f"{VISION}post_layernorm.",
    "connector.query_tokens": "query_tokens",
    "connector.qformer.": "qformer.",
    "opt_proj.": "language_projection.",
}
_TEXT_SIDE = re.compile(r"\.layer\.\d+\.(intermediate|output)\.")  # the Q-Former's text feed-forward
_LAVIS_IGNORED = re.compile(
    r"^(Qformer\.cls\.|Qformer\.bert\.embeddings\.(word_embeddings|position_embeddings|"
    r"position_ids)|vision_proj\.|text_proj\.|itm_head\.|temp$)"
)


def hf_name(name: str) -> str:
    """Our stored tensor's name -> the Hugging Face BLIP-2 folder's."""
    for ours, theirs in _HF.items():
        if name.startswith(ours):
            return theirs + name[len(ours) :]
    raise KeyError(f"{name} has no place in a Hugging Face BLIP-2 folder")


def lavis_name(name: str) -> str:
    """Our stored tensor's name -> the LAVIS blip2_opt checkpoint's."""
    if name == "connector.query_tokens":
        return "query_tokens"
    if name.startswith("connector.qformer.layernorm."):
        return "Qformer.bert.embeddings.LayerNorm." + name[len("connector.qformer.layernorm.") :]
    if name.startswith("connector.qformer."):
        inner = re.sub(r"\.(attention|crossattention)\.attention\.", r".\1.self.", name[len("connector.qformer.") :])
        return "Qformer.bert." + inner
    return name


def _require(ok: bool, folder: Path, what: str) -> None:
    if not ok:
        raise ValueError(f"{folder}/config.json: {what}")


def hf_model_config(config: Blip2Config, folder: Path, prompt: str = "") -> ModelConfig:
    """Our model config for a Hugging Face BLIP-2 config, refusing what our ViT (timm's EVA) does not compute."""
    vision, qformer = config.vision_config, config.qformer_config
    _require(
        vision.hidden_act == "gelu",
        folder,
        f"vision_config.hidden_act is {vision.hidden_act!r}; EVA uses 'gelu' (exact)",
    )
    _require(
        vision.layer_norm_eps == EVA_EPS,
        folder,
        f"vision_config.layer_norm_eps is {vision.layer_norm_eps}; EVA's blocks use {EVA_EPS}",
    )
    _require(vision.qkv_bias, folder, "vision_config.qkv_bias is false; BLIP-2's EVA has q and v biases")
    _require(
        isinstance(vision.image_size, int) and isinstance(vision.patch_size, int),
        folder,
        "vision_config.image_size and patch_size must be single numbers (square images and patches)",
    )
    width, inner = vision.hidden_size, vision.intermediate_size
    ratio = inner / width if int(width * (inner / width)) == inner else (inner + 0.5) / width  # timm: int(C * r)
    wanted = dict(
        img_size=vision.image_size,
        patch_size=vision.patch_size,
        embed_dim=width,
        depth=vision.num_hidden_layers,
        num_heads=vision.num_attention_heads,
        mlp_ratio=ratio,
    )
    connector = QFormerConfig(
        hidden_size=qformer.hidden_size,
        num_layers=qformer.num_hidden_layers,
        num_heads=qformer.num_attention_heads,
        intermediate_size=qformer.intermediate_size,
        num_query_tokens=config.num_query_tokens,
        cross_attention_frequency=qformer.cross_attention_frequency,
        hidden_act=qformer.hidden_act,
        hidden_dropout=float(qformer.hidden_dropout_prob),
        attention_dropout=float(qformer.attention_probs_dropout_prob),
        layer_norm_eps=qformer.layer_norm_eps,
    )
    return ModelConfig(
        vit=VitConfig(preset="eva_vit_g", overrides={k: v for k, v in wanted.items() if v != _EVA_G[k]}),
        connector=connector,
        lm=LMConfig(prompt=prompt),
        image_size=vision.image_size,
        ln_vision_eps=vision.layer_norm_eps,
    )


def _widths(model: torch.nn.Module) -> str:
    return (
        f"the model has a ViT of width {model.vit.embed_dim}, a Q-Former of width {model.connector_width} with "
        f"{model.connector.num_query_tokens} queries and an LLM of width {model.opt_proj.out_features}"
    )


def import_hf_blip2(folder: str | Path, out_dir: str | Path, prompt: str = "") -> Path:
    """Check a Hugging Face BLIP-2 folder against the captioner its config describes and write the model directory
    (pointing at the folder for the ViT and the LLM) at `out_dir`."""
    folder = Path(folder).expanduser().resolve()
    config = read_blip2_config(folder)
    cfg = hf_model_config(config, folder, prompt)
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise FileNotFoundError(
            f"{folder} has no tokenizer (tokenizer.json / tokenizer_config.json): save the "
            "processor or the OPT tokenizer into it with save_pretrained"
        )
    cfg.vit.weights = cfg.lm.path = str(folder)
    model = build_from_pointers(cfg, folder, meta=True)
    if model.vit.blocks[0].mlp.fc1.out_features != config.vision_config.intermediate_size:
        raise ValueError(f"{folder}: the vision MLP width cannot be built by timm's EVA at this hidden size")

    found = folder_tensors(folder)
    ignored = sorted(name for name in found if name.startswith("qformer.") and _TEXT_SIDE.search(name))
    tied = {LANGUAGE + name for name in tied_names(model.lm)}
    used = {name: t for name, t in found.items() if name not in ignored and name not in tied}
    expected = hf_vision_shapes({name: t.shape for name, t in model.vit.state_dict().items()})
    expected |= {LANGUAGE + name: t.shape for name, t in model.lm.state_dict().items() if LANGUAGE + name not in tied}
    stored = stored_tensors(model, cfg)
    expected |= {hf_name(name): t.shape for name, t in stored.items()}
    check_tensors(expected, used, f"{folder} ({_widths(model)})")
    eva_from_hf({name: t for name, t in used.items() if name.endswith("self_attn.qkv.bias")}, str(folder))
    if ignored:
        log.info(
            "%s: ignored %d tensors of the Q-Former's text side, which captioning does not use", folder, len(ignored)
        )
    frozen = fingerprint(folder)
    cfg.frozen = {"vit": frozen, "lm": frozen}
    return save_model_dir(None, cfg, out_dir, tensors={name: used[hf_name(name)] for name in stored})


def lavis_holds_vit(state: Mapping[str, torch.Tensor]) -> bool:
    return any(name.startswith(VISUAL_PREFIX) for name in state)


def import_lavis_blip2(
    ckpt: str | Path,
    lm_path: str | Path,
    model_cfg: ModelConfig,
    out_dir: str | Path,
    vit_weights: str | Path | None = None,
    prompt: str | None = None,
) -> Path:
    """Check a LAVIS blip2_opt checkpoint against the captioner `model_cfg` describes on the given frozen parts, and
    write it as a model directory at `out_dir`. The ViT comes from the checkpoint when it holds `visual_encoder.*`
    (then `vit_weights` must not be given), else from `vit_weights`."""
    ckpt, lm_path = (Path(p).expanduser().resolve() for p in (ckpt, lm_path))
    state = read_lavis_checkpoint(ckpt)
    if model_cfg.connector.kind != "qformer":
        raise ValueError(
            f"the model config for a BLIP-2 checkpoint needs connector.kind qformer, got {model_cfg.connector.kind!r}"
        )
    if lavis_holds_vit(state):
        if vit_weights is not None:
            raise ValueError(f"{ckpt} holds its ViT ({VISUAL_PREFIX}*); other ViT weights must not be given")
        vit_source = ckpt
    elif vit_weights is None:
        raise ValueError(f"{ckpt} holds no ViT ({VISUAL_PREFIX}*): give the ViT weights (BLIP-2's eva_vit_g.pth)")
    else:
        vit_source = Path(vit_weights).expanduser().resolve()

    cfg = copy.deepcopy(model_cfg)
    cfg.vit.weights, cfg.lm.path, cfg.frozen = str(vit_source), str(lm_path), {}
    if prompt is not None:
        cfg.lm.prompt = prompt
    model = build_from_pointers(cfg, ckpt.parent, meta=True)
    vit = vit_source_tensors(vit_source, len(model.vit.blocks))
    prefix = VISUAL_PREFIX if vit_source == ckpt else ""  # names as the file spells them
    check_tensors(
        {prefix + name: t.shape for name, t in model.vit.state_dict().items()},
        {prefix + name: t for name, t in vit.items()},
        f"{vit_source} (its ViT)",
    )

    ignored = sorted(
        name
        for name in state
        if _LAVIS_IGNORED.match(name) or (name.startswith("Qformer.bert.encoder.") and _TEXT_SIDE.search(name))
    )
    found = {name: t for name, t in state.items() if name not in ignored and not name.startswith(VISUAL_PREFIX)}
    stored = stored_tensors(model, cfg)
    check_tensors({lavis_name(name): t.shape for name, t in stored.items()}, found, f"{ckpt} ({_widths(model)})")
    if ignored:
        log.info(
            "%s: ignored %d tensors captioning does not use (the Q-Former's text side, representation heads)",
            ckpt,
            len(ignored),
        )
    cfg.frozen = {"vit": fingerprint(vit_source), "lm": fingerprint(lm_path)}
    return save_model_dir(None, cfg, out_dir, tensors={name: found[lavis_name(name)] for name in stored})


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        description=__doc__, epilog=EXIT_STATUS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", type=Path, help="a Hugging Face BLIP-2 folder, or a LAVIS blip2_opt checkpoint")
    parser.add_argument("--lm-path", type=Path, help="with a .pth: local Hugging Face folder of the OPT")
    parser.add_argument("--vit-weights", type=Path, help="with a .pth that holds no ViT: BLIP-2's eva_vit_g.pth")
    parser.add_argument(
        "--model-config", help=f"with a .pth: name in configs/model/ or a .yaml (default {DEFAULT_MODEL_CONFIG})"
    )
    parser.add_argument("--prompt", help="text between the soft prompt and every caption (default: none)")
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if is_blip2_folder(args.source):
            extra = [
                flag
                for flag, value in (
                    ("--lm-path", args.lm_path),
                    ("--vit-weights", args.vit_weights),
                    ("--model-config", args.model_config),
                )
                if value is not None
            ]
            if extra:
                parser.error(f"{' and '.join(extra)} do not apply to a Hugging Face folder, which holds everything")
            out = import_hf_blip2(args.source, args.out, args.prompt or "")
        else:
            if args.lm_path is None:
                parser.error(f"{args.source} is not a Hugging Face BLIP-2 folder; a LAVIS checkpoint needs --lm-path")
            out = import_lavis_blip2(
                args.source,
                args.lm_path,
                load_model_config(args.model_config or DEFAULT_MODEL_CONFIG),
                args.out,
                args.vit_weights,
                args.prompt,
            )
    except (ValueError, FileNotFoundError) as error:  # a file that is not what it was given as, or is missing
        raise InputError(str(error)) from None
    print(f"wrote {out}")
    return out


def cli() -> int:
    """`python -m simvlg_video.formats.blip2_checkpoint`: the exit status."""
    return exit_status(main)


if __name__ == "__main__":
    sys.exit(cli())
