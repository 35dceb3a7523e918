"""Tiny BLIP-2 OPT captioners in both published layouts, with random values.

The Hugging Face folder is made by transformers itself: `Blip2ForConditionalGeneration` from a tiny `Blip2Config`,
every tensor given seeded random values (the qkv bias's k part stays zero, as in BLIP-2), `save_pretrained`, and
the word tokenizer at the folder's root. The LAVIS layout of the same weights is written out here from the names
the published checkpoints use, not from our modules, so a wrong name on our side cannot agree with it. Widths differ
per part (ViT 32, Q-Former 24, LLM 40) so that a tensor mapped to the wrong part fails on its shape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    OPTConfig,
)

from simvlg_video.data_tools import shapes
from simvlg_video.model.config import ModelConfig
from simvlg_video.model.lm import LMConfig, build_word_tokenizer
from simvlg_video.model.qformer import QFormerConfig
from simvlg_video.model.vit import VitConfig

VISION = dict(width=32, depth=3, heads=4, mlp=64, patch=8, image=32)
QFORMER = dict(hidden=24, layers=3, heads=4, intermediate=48, queries=6, frequency=2)
LM_WIDTH = 40
PROMPT = "a photo of"
CORPUS = [PROMPT, *(caption for group in shapes.caption_groups() for caption in group)]


def tiny_blip2_config(vocab_size: int, pad: int, bos: int, eos: int) -> Blip2Config:
    """The tiny architecture; the image token is the last id, past the tokenizer's words."""
    return Blip2Config(
        vision_config=Blip2VisionConfig(
            hidden_size=VISION["width"],
            intermediate_size=VISION["mlp"],
            num_hidden_layers=VISION["depth"],
            num_attention_heads=VISION["heads"],
            image_size=VISION["image"],
            patch_size=VISION["patch"],
            layer_norm_eps=1e-6,
            hidden_act="gelu",
        ),
        qformer_config=Blip2QFormerConfig(
            hidden_size=QFORMER["hidden"],
            num_hidden_layers=QFORMER["layers"],
            num_attention_heads=QFORMER["heads"],
            intermediate_size=QFORMER["intermediate"],
            cross_attention_frequency=QFORMER["frequency"],
        ),
        text_config=OPTConfig(
            vocab_size=vocab_size + 1,
            hidden_size=LM_WIDTH,
            word_embed_proj_dim=LM_WIDTH,
            num_hidden_layers=2,
            num_attention_heads=4,
            ffn_dim=2 * LM_WIDTH,
            max_position_embeddings=128,
            dropout=0.0,
            attention_dropout=0.0,
            pad_token_id=pad,
            bos_token_id=bos,
            eos_token_id=eos,
        ),
        num_query_tokens=QFORMER["queries"],
        image_token_index=vocab_size,
    )


def tiny_model_config() -> ModelConfig:
    """The architecture the LAVIS-layout files fit. ln_vision's eps is the Hugging Face folder's (1e-6; LAVIS's own
    is 1e-5), so both layouts can be compared with transformers' model."""
    return ModelConfig(
        vit=VitConfig(
            preset="eva_vit_g",
            overrides=dict(
                img_size=VISION["image"],
                patch_size=VISION["patch"],
                embed_dim=VISION["width"],
                depth=VISION["depth"],
                num_heads=VISION["heads"],
                mlp_ratio=VISION["mlp"] / VISION["width"],
            ),
        ),
        connector=QFormerConfig(
            hidden_size=QFORMER["hidden"],
            num_layers=QFORMER["layers"],
            num_heads=QFORMER["heads"],
            intermediate_size=QFORMER["intermediate"],
            num_query_tokens=QFORMER["queries"],
            cross_attention_frequency=QFORMER["frequency"],
        ),
        lm=LMConfig(prompt="", caption_end="\n", max_text_tokens=32),
        image_size=VISION["image"],
        ln_vision_eps=1e-6,
    )


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Seeded values of a plausible scale for every tensor: norm weights near 1, matrices ~ 1/sqrt(fan-in), the
    rest small; the k third of each vision qkv bias zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith("weight") and param.ndim == 1:
                param.copy_(1.0 + 0.1 * noise)
            elif name.endswith("weight") and param.ndim >= 2 and "embed" not in name:
                param.copy_(noise / torch.tensor(param.shape[1:]).prod().float().sqrt())
            else:
                param.copy_(0.1 * noise if name != "query_tokens" else noise)
            if name.endswith("self_attn.qkv.bias"):
                param[VISION["width"] : 2 * VISION["width"]] = 0


# --- the LAVIS blip2_opt layout, written out from the published checkpoints' names ---


def _lavis_name(hf_name: str) -> str | None:
    if hf_name == "query_tokens" or hf_name.startswith("vision_model.post_layernorm."):
        return hf_name.replace("vision_model.post_layernorm.", "ln_vision.")
    if hf_name.startswith("language_projection."):
        return "opt_proj." + hf_name.split(".", 1)[1]
    if hf_name.startswith("qformer.layernorm."):
        return "Qformer.bert.embeddings.LayerNorm." + hf_name.rsplit(".", 1)[1]
    if hf_name.startswith("qformer.encoder."):
        name = re.sub(r"\.(attention|crossattention)\.attention\.", r".\1.self.", hf_name)
        return "Qformer.bert." + name[len("qformer.") :]
    return None


def _eva_vision(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BLIP-2's eva_vit_g.pth names for the folder's vision tensors."""
    v = "vision_model."
    out = {
        "cls_token": hf[v + "embeddings.class_embedding"],
        "pos_embed": hf[v + "embeddings.position_embedding"],
        "patch_embed.proj.weight": hf[v + "embeddings.patch_embedding.weight"],
        "patch_embed.proj.bias": hf[v + "embeddings.patch_embedding.bias"],
    }
    for i in range(VISION["depth"]):
        layer, block = f"{v}encoder.layers.{i}.", f"blocks.{i}."
        q, _, v_bias = hf[layer + "self_attn.qkv.bias"].chunk(3)
        out |= {
            block + "attn.q_bias": q,
            block + "attn.v_bias": v_bias,
            block + "attn.qkv.weight": hf[layer + "self_attn.qkv.weight"],
        }
        for ours, theirs in (
            ("norm1", "layer_norm1"),
            ("norm2", "layer_norm2"),
            ("attn.proj", "self_attn.projection"),
            ("mlp.fc1", "mlp.fc1"),
            ("mlp.fc2", "mlp.fc2"),
        ):
            out |= {f"{block}{ours}.{p}": hf[f"{layer}{theirs}.{p}"] for p in ("weight", "bias")}
    return out


def lavis_extras(seed: int = 5) -> dict[str, torch.Tensor]:
    """What a LAVIS BLIP-2 checkpoint may hold that captioning does not use: the Q-Former's text side (its word and
    position embeddings, each layer's text feed-forward, the LM head) and the representation stage's heads."""
    hidden, inner = QFORMER["hidden"], QFORMER["intermediate"]
    generator = torch.Generator().manual_seed(seed)
    shapes_ = {
        "Qformer.bert.embeddings.word_embeddings.weight": (30, hidden),
        "Qformer.bert.embeddings.position_embeddings.weight": (64, hidden),
        "Qformer.cls.predictions.bias": (30,),
        "Qformer.cls.predictions.transform.dense.weight": (hidden, hidden),
        "vision_proj.weight": (8, hidden),
        "vision_proj.bias": (8,),
        "text_proj.weight": (8, hidden),
        "text_proj.bias": (8,),
        "itm_head.weight": (2, hidden),
        "itm_head.bias": (2,),
        "temp": (),
    }
    for i in range(QFORMER["layers"]):
        layer = f"Qformer.bert.encoder.layer.{i}"
        shapes_ |= {
            f"{layer}.intermediate.dense.weight": (inner, hidden),
            f"{layer}.intermediate.dense.bias": (inner,),
            f"{layer}.output.dense.weight": (hidden, inner),
            f"{layer}.output.dense.bias": (hidden,),
            f"{layer}.output.LayerNorm.weight": (hidden,),
            f"{layer}.output.LayerNorm.bias": (hidden,),
        }
    return {name: 0.1 * torch.randn(shape, generator=generator) for name, shape in shapes_.items()}


@dataclass
class Blip2Files:
    folder: Path  # the Hugging Face folder
    hf_state: dict[str, torch.Tensor]  # its tensors
    ckpt: Path  # the LAVIS checkpoint of the same weights, without its ViT
    ckpt_with_vit: Path  # the same with visual_encoder.*
    lavis_state: dict[str, torch.Tensor]  # the first one's state dict as written
    vit_weights: Path  # eva_vit.pth: the ViT in BLIP-2's EVA names
    lm_path: Path  # the OPT in a folder of its own, with the tokenizer
    model_cfg: ModelConfig  # the architecture for the LAVIS import


def write_blip2_files(out: Path, seed: int = 0) -> Blip2Files:
    """Write the tiny BLIP-2 in both layouts into `out` (once; later calls read what is there)."""
    out.mkdir(parents=True, exist_ok=True)
    folder, lm_path = out / "blip2-hf", out / "opt"
    tokenizer = build_word_tokenizer(CORPUS)
    if not (folder / "config.json").is_file():
        torch.manual_seed(seed)
        model = Blip2ForConditionalGeneration(
            tiny_blip2_config(len(tokenizer), tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
        ).eval()
        _randomise(model, seed)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        model.language_model.save_pretrained(lm_path)
        tokenizer.save_pretrained(lm_path)
        hf_state = {name: t.detach().clone() for name, t in model.state_dict().items()}
        lavis = {name: hf_state[hf] for hf in hf_state if (name := _lavis_name(hf)) is not None} | lavis_extras()
        torch.save({"model": lavis, "optimizer": {}, "iters": 100}, out / "blip2_opt.pth")
        vit = _eva_vision(hf_state)
        torch.save(
            {"model": lavis | {f"visual_encoder.{name}": t for name, t in vit.items()}}, out / "blip2_opt_with_vit.pth"
        )
        torch.save(vit, out / "eva_vit.pth")
    hf_state = Blip2ForConditionalGeneration.from_pretrained(folder).state_dict()
    lavis_state = torch.load(out / "blip2_opt.pth", weights_only=True)["model"]
    return Blip2Files(
        folder,
        hf_state,
        out / "blip2_opt.pth",
        out / "blip2_opt_with_vit.pth",
        lavis_state,
        out / "eva_vit.pth",
        lm_path,
        tiny_model_config(),
    )


def hf_model(files: Blip2Files) -> Blip2ForConditionalGeneration:
    """transformers' own model of the folder, in fp32 and eval mode: the third party the parity tests compare with."""
    return Blip2ForConditionalGeneration.from_pretrained(files.folder, dtype=torch.float32).eval()
