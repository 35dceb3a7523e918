"""A Hugging Face BLIP-2 folder (`Blip2ForConditionalGeneration.save_pretrained`, + the OPT tokenizer at its root) as
the source of a captioner's frozen parts, read in place: nothing is converted or written out.

* The ViT is `vision_model.*` under Hugging Face's names; it is mapped onto timm's EVA (BLIP-2's `eva_vit_g.pth`
  names) as it is read, so the toolkit keeps one ViT: `embeddings.class_embedding` -> `cls_token`,
  `embeddings.position_embedding` -> `pos_embed`, `embeddings.patch_embedding` -> `patch_embed.proj`,
  `encoder.layers.{i}.{layer_norm1, self_attn.qkv, self_attn.projection, layer_norm2, mlp.fc1, mlp.fc2}` ->
  `blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}`, and the one qkv bias vector (q bias, k bias,
  v bias) -> `attn.q_bias` and `attn.v_bias`. EVA has no k bias: a folder whose k bias is not zero is refused.
  `vision_model.post_layernorm` is the captioner's `ln_vision`, which trains, so it is stored with the model.
* The LM is `language_model.*`, built from the config's `text_config` on the meta device and filled from the
  memory-mapped files; a tied output head takes the input embedding, as transformers ties it.

Weights are read from the folder's safetensors files (one file, or several with `model.safetensors.index.json`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, Blip2Config, PreTrainedModel

from simvlg_video.formats.tensor_io import copy_into, read_safetensors

log = logging.getLogger(__name__)

MODEL_TYPE = "blip-2"
VISION, LANGUAGE = "vision_model.", "language_model."
_STEM = {
    "cls_token": "embeddings.class_embedding",
    "pos_embed": "embeddings.position_embedding",
    "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
    "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
}
_BLOCK = {  # EVA block tensor -> Hugging Face encoder layer tensor (q_bias and v_bias share `self_attn.qkv.bias`)
    "norm1.weight": "layer_norm1.weight",
    "norm1.bias": "layer_norm1.bias",
    "attn.qkv.weight": "self_attn.qkv.weight",
    "attn.proj.weight": "self_attn.projection.weight",
    "attn.proj.bias": "self_attn.projection.bias",
    "norm2.weight": "layer_norm2.weight",
    "norm2.bias": "layer_norm2.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
}
_HF_BLOCK = {hf: eva for eva, hf in _BLOCK.items()}
_QKV_BIAS = "self_attn.qkv.bias"
_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")


def is_blip2_folder(path: str | Path) -> bool:
    """Whether `path` is a folder whose config.json declares a BLIP-2 model (`model_type: blip-2`)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == MODEL_TYPE
    except (json.JSONDecodeError, AttributeError):
        return False


def read_blip2_config(folder: str | Path) -> Blip2Config:
    """The folder's `Blip2Config`; a folder of another kind is an error naming what it is."""
    folder = Path(folder)
    if not is_blip2_folder(folder):
        raise ValueError(
            f"{folder} is not a Hugging Face BLIP-2 folder (its config.json must say model_type "
            f"{MODEL_TYPE!r}, as Blip2ForConditionalGeneration.save_pretrained writes it)"
        )
    return Blip2Config.from_pretrained(folder, local_files_only=True)


def folder_tensors(folder: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's safetensors files, memory-mapped (untouched tensors cost nothing)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted({folder / name for name in json.loads(index.read_text())["weight_map"].values()})
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(
            f"{folder} holds no .safetensors weights (a folder with only pytorch_model*.bin: "
            "load it with transformers and save it again with save_pretrained)"
        )
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        for name, tensor in read_safetensors(file).items():
            if name in tensors:
                raise ValueError(f"{folder}: tensor {name} is in more than one weights file")
            tensors[name] = tensor
    return tensors


def hf_vision_name(eva_name: str) -> str:
    """The Hugging Face name (under `vision_model.`) of an EVA ViT tensor; q_bias and v_bias -> the qkv bias."""
    if eva_name in _STEM:
        return VISION + _STEM[eva_name]
    match = re.match(r"^blocks\.(\d+)\.(.+)$", eva_name)
    if match and match.group(2) in ("attn.q_bias", "attn.v_bias"):
        return f"{VISION}encoder.layers.{match.group(1)}.{_QKV_BIAS}"
    if match and match.group(2) in _BLOCK:
        return f"{VISION}encoder.layers.{match.group(1)}.{_BLOCK[match.group(2)]}"
    raise KeyError(f"the EVA ViT tensor {eva_name} has no Hugging Face BLIP-2 counterpart")


def hf_vision_shapes(eva_shapes: Mapping[str, torch.Size]) -> dict[str, torch.Size]:
    """The Hugging Face vision tensors (names and shapes) an EVA ViT with these tensors is read from."""
    shapes: dict[str, torch.Size] = {}
    for name, shape in eva_shapes.items():
        hf_name = hf_vision_name(name)
        shapes[hf_name] = torch.Size([3 * shape[0]]) if hf_name.endswith(_QKV_BIAS) else shape
    return shapes


def eva_from_hf(vision: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """`vision_model.*` tensors (without `post_layernorm`) -> the EVA state dict. Names that map to nothing are kept
    as they are, so a strict check reports them as unexpected; a qkv bias with a non-zero k part is refused."""
    eva_of = {f"{VISION}{hf}": eva for eva, hf in _STEM.items()}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in vision.items():
        match = _LAYER.match(name[len(VISION) :]) if name.startswith(VISION) else None
        if name in eva_of:
            out[eva_of[name]] = tensor
        elif match and match.group(2) == _QKV_BIAS and tensor.ndim == 1 and tensor.shape[0] % 3 == 0:
            q_bias, k_bias, v_bias = tensor.chunk(3)
            if not k_bias.is_meta and bool(k_bias.any()):
                raise ValueError(f"{source}: {name} has a non-zero k bias; BLIP-2's EVA ViT (and timm's) adds none")
            out[f"blocks.{match.group(1)}.attn.q_bias"] = q_bias
            out[f"blocks.{match.group(1)}.attn.v_bias"] = v_bias
        elif match and match.group(2) in _HF_BLOCK:
            out[f"blocks.{match.group(1)}.{_HF_BLOCK[match.group(2)]}"] = tensor
        else:
            out[name] = tensor
    return out


def vision_tensors(folder: str | Path) -> dict[str, torch.Tensor]:
    """The folder's ViT as an EVA state dict (memory-mapped; post_layernorm, the captioner's ln_vision, left out)."""
    tensors = folder_tensors(folder)
    vision = {
        name: t
        for name, t in tensors.items()
        if name.startswith(VISION) and not name.startswith(f"{VISION}post_layernorm.")
    }
    return eva_from_hf(vision, str(folder))


def language_model(folder: str | Path, dtype: torch.dtype = torch.float32, meta: bool = False) -> PreTrainedModel:
    """The folder's language model (`text_config`, `language_model.*`) in `dtype`, in eval mode; `meta=True` builds
    names and shapes only. Every tensor is checked by name and shape against the model the config describes."""
    folder = Path(folder)
    config = read_blip2_config(folder)
    if not config.use_decoder_only_language_model:
        raise ValueError(
            f"{folder} is a BLIP-2 with a {config.text_config.model_type} language model; the captioner "
            "takes a decoder-only (causal) LM such as OPT"
        )
    text_config = config.text_config
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(text_config, dtype=dtype)
    if meta:
        return lm
    lm = lm.to_empty(device="cpu")
    found = {name[len(LANGUAGE) :]: t for name, t in folder_tensors(folder).items() if name.startswith(LANGUAGE)}
    tied = set(tied_names(lm))
    if tied & set(found):
        log.info(
            "%s: %s tied to the input embedding, as transformers ties it; the stored copy is not read",
            folder,
            ", ".join(f"{LANGUAGE}{name}" for name in sorted(tied & set(found))),
        )
    expected = {name: t for name, t in lm.state_dict().items() if name not in tied}
    copy_into(lm, {name: t for name, t in found.items() if name not in tied}, f"{folder} ({LANGUAGE}*)", expected)
    lm.tie_weights()
    unsaved = sorted(set(dict(lm.named_buffers())) - set(lm.state_dict()))
    if unsaved:
        raise RuntimeError(f"the language model of {folder} has buffers no weights file fills: {unsaved}")
    return lm.eval()


def tied_names(lm: PreTrainedModel) -> list[str]:
    """State-dict names that transformers ties to another tensor of the model (an output head to its embedding)."""
    if not getattr(lm.config, "tie_word_embeddings", False):
        return []
    tied = getattr(lm, "_tied_weights_keys", None) or {}
    return sorted(tied)
